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
use crate::models::sd3::SD3Transformer2DModel;
use crate::models::unet::UNet2DConditionModel;
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

    /// An error naming what is missing when `what` (train, generate, cache, eval) cannot run
    /// on this family yet.
    pub fn require_supported(self, model: &Path, what: &str) -> Result<()> {
        match self {
            Family::Sdxl => Ok(()),
            other => bail!(
                "{}: a {} model folder; mapo cannot {what} it yet — its transformer, T5 text encoder and \
                 16-channel VAE are not ported (the SD3 and FLUX issues; docs/design.md §2b). SDXL folders work.",
                model.display(),
                other.name()
            ),
        }
    }
}

/// A denoiser the training step can train: a module whose parameters the optimizer walks.
/// `as_unet` opens the UNet's block-level gradient checkpointing, the one family that has it.
pub trait TrainDenoiser: Denoiser + burn::module::Module + Clone + Send {
    fn as_unet(&self) -> Option<&UNet2DConditionModel> {
        None
    }
}

impl TrainDenoiser for UNet2DConditionModel {
    fn as_unet(&self) -> Option<&UNet2DConditionModel> {
        Some(self)
    }
}

impl TrainDenoiser for SD3Transformer2DModel {}
