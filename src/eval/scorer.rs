//! Reward models behind one trait: a scorer takes images (and their prompts) and gives one
//! number per image. CLIP-based ones (docs/design.md §9): PickScore = exp(logit_scale) · cos(image,
//! text); CLIP score = 100 · max(cos, 0) (torchmetrics); HPS = cos with an open_clip model.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::preprocess::ClipImageProcessor;
use super::resize::Rgb8;
use crate::models::clip::model::{ClipModel, cosine};
use crate::models::clip::open_clip::{self, OpenClipConfig};
use crate::models::clip::tokenizer::ClipTokenizer;

pub trait Scorer {
    fn name(&self) -> &'static str;
    /// Whether the score depends on the prompt.
    fn needs_text(&self) -> bool;
    /// One score per image (`prompts` has one entry per image when `needs_text`).
    fn score(&self, images: &[Rgb8], prompts: &[String]) -> Result<Vec<f64>>;
    /// The image reduced to what `score` reads of it (its resize and crop), so a caller can
    /// decode one image at a time and keep only this: scores are unchanged.
    fn shrink(&self, image: Rgb8) -> Result<Rgb8> {
        Ok(image)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipKind {
    PickScore,
    ClipScore,
    /// HPSv2 / v2.1: `cos(image, text)` (the papers print it ×100).
    Hps,
}

/// PickScore or CLIP score with a transformers CLIPModel folder (weights, config,
/// `preprocessor_config.json`, `vocab.json` + `merges.txt`).
pub struct ClipScorer {
    kind: ClipKind,
    model: ClipModel,
    processor: ClipImageProcessor,
    tokenizer: ClipTokenizer,
    device: Device,
}

impl ClipScorer {
    pub fn load(kind: ClipKind, dir: &Path, device: &Device) -> Result<Self> {
        let (model, config) = ClipModel::from_dir(dir, device, DType::F32)?;
        let processor = ClipImageProcessor::from_dir(dir)?;
        let size = config.vision_config.image_size;
        ensure!(
            processor.crop == Some((size, size)),
            "{}: the processor crops to {:?}, the vision tower takes {size}×{size}",
            dir.display(),
            processor.crop
        );
        let tokenizer = ClipTokenizer::from_dir(dir)?;
        Ok(Self { kind, model, processor, tokenizer, device: device.clone() })
    }

    /// An open_clip checkpoint (HPS) with open_clip's val transform; `tokenizer`: a CLIP
    /// tokenizer folder (vocab.json + merges.txt).
    pub fn open_clip(
        kind: ClipKind,
        checkpoint: &Path,
        config: Option<&Path>,
        tokenizer: &Path,
        device: &Device,
    ) -> Result<Self> {
        let config = OpenClipConfig::read(config)?;
        let (model, hf) = open_clip::load(checkpoint, &config, device)?;
        let processor = ClipImageProcessor::open_clip(hf.vision_config.image_size);
        let tokenizer = ClipTokenizer::from_dir(tokenizer)?.with_open_clip_cleaning();
        Ok(Self { kind, model, processor, tokenizer, device: device.clone() })
    }

    /// The cosine similarity of each image with its prompt.
    fn cosines(&self, images: &[Rgb8], prompts: &[String]) -> Result<Vec<f64>> {
        ensure!(images.len() == prompts.len(), "{} images but {} prompts", images.len(), prompts.len());
        let n = images.len();
        if n == 0 {
            return Ok(vec![]);
        }
        let x = self.processor.batch(images, &self.device)?;
        prompts.iter().for_each(|p| self.tokenizer.warn_if_truncated(p));
        let ids: Vec<i64> = prompts.iter().flat_map(|p| self.tokenizer.encode(p)).collect();
        let len = ids.len() / n;
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, len]), &self.device);
        let cos = cosine(self.model.image_embeds(x), self.model.text_embeds(ids));
        let values = cos.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(values.into_iter().map(f64::from).collect())
    }
}

impl Scorer for ClipScorer {
    fn name(&self) -> &'static str {
        match self.kind {
            ClipKind::PickScore => "pickscore",
            ClipKind::ClipScore => "clip",
            ClipKind::Hps => "hps",
        }
    }

    fn needs_text(&self) -> bool {
        true
    }

    fn shrink(&self, image: Rgb8) -> Result<Rgb8> {
        self.processor.geometry(&image)
    }

    fn score(&self, images: &[Rgb8], prompts: &[String]) -> Result<Vec<f64>> {
        let cos = self.cosines(images, prompts)?;
        Ok(match self.kind {
            ClipKind::PickScore => cos.iter().map(|c| self.model.logit_scale() * c).collect(),
            ClipKind::ClipScore => cos.iter().map(|c| 100.0 * c.max(0.0)).collect(),
            ClipKind::Hps => cos,
        })
    }
}

/// What a scorer is loaded from besides its own file or folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScorerFiles<'a> {
    /// aesthetic: the ViT-L/14 CLIPModel folder its MLP reads the embeddings of.
    pub clip: Option<&'a Path>,
    /// hps: the open_clip model config (default ViT-H-14).
    pub config: Option<&'a Path>,
    /// hps: a CLIP tokenizer folder (vocab.json + merges.txt).
    pub tokenizer: Option<&'a Path>,
}

/// The one place a scorer is built from its name (`mapo score`, `mapo eval`); the toy
/// model's `style_b` and `fidelity` need no files (`model` is not read).
pub fn load_scorer(name: &str, model: &Path, extra: ScorerFiles, device: &Device) -> Result<Box<dyn Scorer>> {
    if let Some(toy) = crate::toy::score::ToyScorer::from_name(name) {
        return Ok(Box::new(toy));
    }
    Ok(match name {
        "pickscore" => Box::new(ClipScorer::load(ClipKind::PickScore, model, device)?),
        "clip" => Box::new(ClipScorer::load(ClipKind::ClipScore, model, device)?),
        "aesthetic" => {
            let clip = extra.clip.context("the aesthetic scorer needs --clip DIR (the ViT-L/14 CLIPModel folder)")?;
            Box::new(super::aesthetic::AestheticScorer::load(model, clip, device)?)
        }
        "hps" => {
            let tokenizer = extra.tokenizer.context(
                "the hps scorer needs --tokenizer DIR: a CLIP tokenizer folder with vocab.json and merges.txt \
                 (e.g. an SDXL model's tokenizer/)",
            )?;
            Box::new(ClipScorer::open_clip(ClipKind::Hps, model, extra.config, tokenizer, device)?)
        }
        other => anyhow::bail!(
            "scorer {other:?}: expected pickscore, clip, aesthetic, hps, or the built-in model's style_b or fidelity"
        ),
    })
}
