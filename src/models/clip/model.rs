//! transformers' `CLIPModel` (what PickScore and OpenAI's CLIP ship): the text tower with
//! its `text_projection`, the vision tower with `visual_projection`, and `logit_scale`.

use std::path::Path;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::{DType, Device, Int, Tensor};
use serde::Deserialize;

use super::vision::{ClipVisionConfig, ClipVisionModel};
use super::{ClipTextConfig, ClipTextModel};
use crate::models::io::SafeTensorFiles;
use crate::models::nn::Linear;
use crate::models::weights::Weights;

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ClipModelConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(default = "five_twelve")]
    pub projection_dim: usize,
}

fn five_twelve() -> usize {
    512
}

#[derive(Module, Debug)]
pub struct ClipModel {
    pub text_model: ClipTextModel,
    pub vision_model: ClipVisionModel,
    pub visual_projection: Linear,
    /// `exp(logit_scale)`, read once (a 0-dimensional tensor in the checkpoint).
    logit_scale_exp: f64,
}

impl ClipModel {
    /// A transformers CLIPModel folder: `config.json` + `model.safetensors` (or shards).
    pub fn from_dir(dir: &Path, device: &Device, dtype: DType) -> Result<(Self, ClipModelConfig)> {
        let (config, _) = crate::models::config::read_config::<ClipModelConfig>(dir)?;
        let files = SafeTensorFiles::open_component(dir, &["model"])?;
        let model = Self::from_files(&config, &files, &dir.display().to_string(), device, dtype)?;
        Ok((model, config))
    }

    /// The model of `config` from weights in transformers' names; `what` names the source
    /// in errors.
    pub fn from_files(
        config: &ClipModelConfig,
        files: &SafeTensorFiles,
        what: &str,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        Weights::precheck(files, None, |w| {
            w.skip("logit_scale");
            Self::towers(config, w)
        })
        .with_context(|| format!("loading {what}"))?;
        let w = Weights::from_files(files, device, dtype);
        let (text_model, vision_model, visual_projection) = Self::towers(config, &w)?;
        w.skip("logit_scale");
        w.finish().with_context(|| format!("loading {what}"))?;
        let scale = files.scalar("logit_scale").with_context(|| what.to_string())?;
        Ok(Self { text_model, vision_model, visual_projection, logit_scale_exp: scale.exp() })
    }

    /// Every parameter's name and shape for `config` (nothing is allocated).
    pub fn expected_shapes(config: &ClipModelConfig) -> Result<std::collections::BTreeMap<String, Vec<usize>>> {
        let w = Weights::shapes_only(&Device::default());
        drop(Self::towers(config, &w)?);
        Ok(w.requested().into_iter().collect())
    }

    fn towers(config: &ClipModelConfig, w: &Weights) -> Result<(ClipTextModel, ClipVisionModel, Linear)> {
        let mut text_config = config.text_config.clone();
        // The projections' size is the model's, whatever the text config repeats.
        text_config.projection_dim = Some(config.projection_dim);
        let text_model = ClipTextModel::load(&text_config, w, true)?;
        let vision_model = ClipVisionModel::load(&config.vision_config, &w.pp("vision_model"))?;
        let visual_projection =
            Linear::load(&w.pp("visual_projection"), config.vision_config.hidden_size, config.projection_dim, false);
        Ok((text_model, vision_model, visual_projection))
    }

    /// Randomly initialised (benchmarks at the real sizes without the checkpoints).
    pub fn random(config: &ClipModelConfig, device: &Device) -> Result<Self> {
        let w = Weights::random(device, DType::F32);
        let (text_model, vision_model, visual_projection) = Self::towers(config, &w)?;
        Ok(Self { text_model, vision_model, visual_projection, logit_scale_exp: 100.0 })
    }

    /// `exp(logit_scale)`, PickScore's multiplier.
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale_exp
    }

    /// `get_image_features`: [B, 3, S, S] → [B, P] (not normalised).
    pub fn image_embeds(&self, pixels: Tensor<4>) -> Tensor<2> {
        self.visual_projection.forward(self.vision_model.forward(pixels))
    }

    /// `get_text_features`: [B, L] ids → [B, P] (not normalised).
    pub fn text_embeds(&self, ids: Tensor<2, Int>) -> Tensor<2> {
        self.text_model.forward(ids).text_embeds.expect("CLIPModel's text tower has its projection")
    }
}

/// Row-wise cosine similarity of two [B, P] tensors → [B].
pub fn cosine(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    let norm = |t: Tensor<2>| t.clone().div(t.square().sum_dim(1).sqrt());
    let [n, _] = a.dims();
    (norm(a) * norm(b)).sum_dim(1).reshape([n])
}
