//! The model-family seam: which family a model folder holds, what its denoiser is called
//! through, and the objective it is trained with by default. Trainer, cache, `generate`,
//! `eval` and the experiment ask here instead of assuming SDXL, so that SD3/SD3.5 and
//! FLUX.1 (flow matching, `transformer/` denoisers) join as families without touching them.
//!
//! A folder's family comes from `model_index.json`'s `_class_name` (diffusers' pipeline
//! class) or, without it, from the denoiser folder's `config.json` (docs/design.md §2b).
//! The built-in toy model is the SDXL family with a tiny config.

use std::path::Path;

use anyhow::{Context, Result, bail};

pub use crate::models::denoiser::{Conditioning, Denoiser};
use std::collections::BTreeMap;

use burn::tensor::{DType, Device, Tensor};

use crate::data::stream::PairSource;
use crate::models::flux::{FluxTransformer2DModel, FluxTransformerConfig};
use crate::models::lora::LoraConfig;
use crate::models::sd3::{SD3Transformer2DModel, SD3TransformerConfig};
use crate::models::unet::{TextTime, UNet2DConditionModel};
use crate::objective::ObjectiveName;

/// The model families mapo knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Stable Diffusion XL (and the toy): `UNet2DConditionModel`, ε-prediction.
    Sdxl,
    /// Stable Diffusion 3 / 3.5: `SD3Transformer2DModel` (MMDiT), flow matching.
    Sd3,
    /// FLUX.1 [dev] / [schnell]: `FluxTransformer2DModel`, flow matching.
    Flux,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Sdxl => "SDXL",
            Family::Sd3 => "SD3",
            Family::Flux => "FLUX.1",
        }
    }

    /// The family of a diffusers folder (a pipeline folder, or the denoiser folder itself).
    pub fn detect(model: &Path) -> Result<Self> {
        let model = &crate::models::folder::model_folder(model)?;
        let index = model.join("model_index.json");
        if let Ok(text) = std::fs::read_to_string(&index) {
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", index.display()))?;
            if let Some(class) = v["_class_name"].as_str()
                && let Some(family) = Self::of_pipeline(class)
            {
                return Ok(family);
            }
        }
        for (folder, file) in
            [("unet", "unet/config.json"), ("transformer", "transformer/config.json"), ("", "config.json")]
        {
            let path = model.join(file);
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let v: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
            match v["_class_name"].as_str().and_then(Self::of_denoiser) {
                Some(family) => return Ok(family),
                None if folder == "unet" => return Ok(Family::Sdxl),
                None => {}
            }
        }
        bail!(
            "{}: not a model folder mapo knows (no model_index.json naming StableDiffusionXLPipeline, \
             StableDiffusion3Pipeline or FluxPipeline, and no unet/ or transformer/ config.json)",
            model.display()
        )
    }

    fn of_pipeline(class: &str) -> Option<Self> {
        match class {
            c if c.starts_with("StableDiffusionXL") => Some(Family::Sdxl),
            c if c.starts_with("StableDiffusion3") => Some(Family::Sd3),
            c if c.starts_with("Flux") => Some(Family::Flux),
            _ => None,
        }
    }

    fn of_denoiser(class: &str) -> Option<Self> {
        match class {
            "UNet2DConditionModel" => Some(Family::Sdxl),
            "SD3Transformer2DModel" => Some(Family::Sd3),
            "FluxTransformer2DModel" => Some(Family::Flux),
            _ => None,
        }
    }

    /// The denoiser's folder in a pipeline folder.
    pub fn denoiser_folder(self) -> &'static str {
        match self {
            Family::Sdxl => "unet",
            Family::Sd3 | Family::Flux => "transformer",
        }
    }

    /// The objective the family was trained with, and is fine-tuned with by default.
    pub fn objective(self) -> ObjectiveName {
        match self {
            Family::Sdxl => ObjectiveName::Epsilon,
            Family::Sd3 | Family::Flux => ObjectiveName::Flow,
        }
    }
}

/// A denoiser the trainer can train: a module whose parameters the optimizer walks, loaded
/// from its diffusers folder, saved under diffusers' names, with a block-checkpointed
/// forward and backward (`gradient_checkpointing`).
pub trait TrainDenoiser: Denoiser + burn::module::Module + Clone + Send + Sized + 'static {
    /// diffusers' name of the component, the prefix of its PEFT LoRA keys.
    const COMPONENT: &'static str;

    /// What the checkpointed forward keeps for its backward.
    type Tape;

    /// Whether a transformer LoRA of this model has a kohya layout (FLUX's BFL names);
    /// SDXL's UNet has its own (sgm blocks, [`Self::as_unet`]).
    const KOHYA_LAYOUT: bool = false;

    /// SDXL's UNet (kohya LoRA names, single-file export are its alone).
    fn as_unet(&self) -> Option<&UNet2DConditionModel> {
        None
    }

    /// The prediction (plain, no graph) of this autodiff model, block by block, with what
    /// [`Self::checkpointed_backward`] needs. Inputs on the autodiff device, the text
    /// states in the compute dtype.
    fn checkpointed_forward(
        &self,
        noisy: Tensor<4>,
        timestep: Tensor<1>,
        cond: &Conditioning,
    ) -> (Tensor<4>, Self::Tape);

    /// The trainable parameters' gradients for an upstream gradient `grad` of the
    /// prediction, each block rerun on its saved inputs. Inputs as given to the forward.
    fn checkpointed_backward(
        &self,
        tape: Self::Tape,
        grad: Tensor<4>,
        noisy: Tensor<4>,
        timestep: Tensor<1>,
        cond: &Conditioning,
    ) -> BTreeMap<String, Tensor<1>>;

    /// The folder's model in `dtype` on `device`, with LoRA adapters (base frozen) when
    /// `lora` is given: read from `adapters` (a LoRA checkpoint's file), else fresh.
    fn load_dir(
        dir: &Path,
        device: &Device,
        dtype: DType,
        lora: Option<LoraConfig>,
        adapters: Option<&Path>,
    ) -> Result<Self>;

    /// Pair data against the model's config (`config.json` of its folder): latents, text
    /// states and pooled text must fit, or the first step fails deep inside.
    fn check_data(data: &PairSource, source: &Path, config: &serde_json::Value) -> Result<()>;
}

/// SDXL's added conditioning in the activations' dtype (time ids stay f32).
fn text_time(cond: &Conditioning, dtype: DType) -> TextTime {
    let time_ids = cond.time_ids.clone().expect("SDXL batches carry time_ids");
    TextTime { text_embeds: cond.pooled.clone(), time_ids }.cast(dtype)
}

impl TrainDenoiser for UNet2DConditionModel {
    const COMPONENT: &'static str = "unet";
    type Tape = crate::models::unet::checkpoint::Tape;

    fn checkpointed_forward(
        &self,
        noisy: Tensor<4>,
        timestep: Tensor<1>,
        cond: &Conditioning,
    ) -> (Tensor<4>, Self::Tape) {
        let tt = text_time(cond, noisy.dtype());
        self.forward_checkpointed(noisy, timestep, cond.context.clone(), Some(&tt))
    }

    fn checkpointed_backward(
        &self,
        tape: Self::Tape,
        grad: Tensor<4>,
        noisy: Tensor<4>,
        timestep: Tensor<1>,
        cond: &Conditioning,
    ) -> BTreeMap<String, Tensor<1>> {
        let tt = text_time(cond, noisy.dtype());
        self.backward_checkpointed(tape, grad, noisy, timestep, cond.context.clone(), Some(&tt))
    }

    fn as_unet(&self) -> Option<&UNet2DConditionModel> {
        Some(self)
    }

    fn load_dir(
        dir: &Path,
        device: &Device,
        dtype: DType,
        lora: Option<LoraConfig>,
        adapters: Option<&Path>,
    ) -> Result<Self> {
        Ok(Self::from_dir_with_lora(dir, device, dtype, lora, adapters)?.0)
    }

    fn check_data(data: &PairSource, source: &Path, config: &serde_json::Value) -> Result<()> {
        data.check_model(source, &serde_json::from_value(config.clone())?)
    }
}

impl TrainDenoiser for SD3Transformer2DModel {
    const COMPONENT: &'static str = "transformer";
    type Tape = crate::models::sd3::checkpoint::Sd3Tape;

    fn checkpointed_forward(
        &self,
        noisy: Tensor<4>,
        timestep: Tensor<1>,
        cond: &Conditioning,
    ) -> (Tensor<4>, Self::Tape) {
        self.forward_checkpointed(noisy, timestep, cond.context.clone(), cond.pooled.clone())
    }

    fn checkpointed_backward(
        &self,
        tape: Self::Tape,
        grad: Tensor<4>,
        noisy: Tensor<4>,
        timestep: Tensor<1>,
        cond: &Conditioning,
    ) -> BTreeMap<String, Tensor<1>> {
        self.backward_checkpointed(tape, grad, noisy, timestep, cond.context.clone(), cond.pooled.clone())
    }

    fn load_dir(
        dir: &Path,
        device: &Device,
        dtype: DType,
        lora: Option<LoraConfig>,
        adapters: Option<&Path>,
    ) -> Result<Self> {
        Ok(Self::from_dir_with_lora(dir, device, dtype, lora, adapters)?.0)
    }

    fn check_data(data: &PairSource, source: &Path, config: &serde_json::Value) -> Result<()> {
        let c: SD3TransformerConfig = serde_json::from_value(config.clone())?;
        let s = data.shape;
        let shape = |n: &str| -> Result<Vec<usize>> {
            Ok(match n {
                "hidden_states" => vec![1, s.latent[0], s.latent[1], s.latent[2]],
                "encoder_hidden_states" => vec![1, s.context[0], s.context[1]],
                "pooled_projections" => vec![1, s.pooled],
                _ => vec![1],
            })
        };
        crate::models::inputs::check_sd3_inputs(&c, &shape).with_context(|| {
            format!("{}: the pairs do not fit the model's transformer (made for another model?)", source.display())
        })
    }
}

impl TrainDenoiser for FluxTransformer2DModel {
    const COMPONENT: &'static str = "transformer";
    const KOHYA_LAYOUT: bool = true;
    type Tape = crate::models::flux::checkpoint::FluxTape;

    fn checkpointed_forward(
        &self,
        noisy: Tensor<4>,
        timestep: Tensor<1>,
        cond: &Conditioning,
    ) -> (Tensor<4>, Self::Tape) {
        let c = cond.clone();
        self.forward_checkpointed(noisy, timestep, c.context, c.pooled, c.guidance)
    }

    fn checkpointed_backward(
        &self,
        tape: Self::Tape,
        grad: Tensor<4>,
        noisy: Tensor<4>,
        timestep: Tensor<1>,
        cond: &Conditioning,
    ) -> BTreeMap<String, Tensor<1>> {
        let c = cond.clone();
        self.backward_checkpointed(tape, grad, noisy, timestep, c.context, c.pooled, c.guidance)
    }

    fn load_dir(
        dir: &Path,
        device: &Device,
        dtype: DType,
        lora: Option<LoraConfig>,
        adapters: Option<&Path>,
    ) -> Result<Self> {
        Ok(Self::from_dir_with_lora(dir, device, dtype, lora, adapters)?.0)
    }

    fn check_data(data: &PairSource, source: &Path, config: &serde_json::Value) -> Result<()> {
        let c: FluxTransformerConfig = serde_json::from_value(config.clone())?;
        let s = data.shape;
        let [ch, h, w] = s.latent;
        let what =
            || format!("{}: the pairs do not fit the model's transformer (made for another model?)", source.display());
        anyhow::ensure!(
            ch == c.latent_channels(),
            "{}: latents have {ch} channels, the transformer packs {} (in_channels {} / 4)",
            what(),
            c.latent_channels(),
            c.in_channels
        );
        crate::models::flux::pack::check_latents("latents", h, w).with_context(what)?;
        anyhow::ensure!(
            s.context[1] == c.joint_attention_dim && s.pooled == c.pooled_projection_dim,
            "{}: text states [_, {}] and pooled text [{}], the transformer takes [_, {}] and [{}]",
            what(),
            s.context[1],
            s.pooled,
            c.joint_attention_dim,
            c.pooled_projection_dim
        );
        Ok(())
    }
}
