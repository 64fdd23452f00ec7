//! Evaluation images from a model folder and any UNet of its architecture (the base one, a
//! fine-tune, a model being trained): SDXL's text encoders and VAE, or the built-in toy
//! model's text encoder (it works on pixels, no VAE). Euler sampling with the folder's
//! scheduler settings; the initial noise depends only on the seed given, so every
//! variant of a model starts each image from the same noise.

use std::path::Path;

use anyhow::{Result, ensure};
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::sample::pipeline::{PromptEncoder, SchedulerConfig};
use crate::sample::validate::{Prompts, decode_images, initial_noise, sample_latents, to_images};
use crate::toy::model::{Conditioner, SIZE};

enum Text {
    Sdxl { prompts: Box<PromptEncoder>, vae: Box<AutoencoderKL>, scaling: f64, factor: usize },
    Toy(Box<Conditioner>),
}

pub struct Renderer {
    text: Text,
    scheduler: SchedulerConfig,
    device: Device,
    dtype: DType,
}

/// How the images are made.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub steps: usize,
    pub guidance: f64,
    /// Pixels per side.
    pub size: usize,
}

impl Renderer {
    /// A folder with `vae/` is an SDXL pipeline; one with only `unet/` and `text_encoder/`
    /// is the built-in toy model (its cached reference).
    pub fn load(model: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let model = &crate::models::folder::model_folder(model)?;
        let toy = !model.join("vae").exists() && !model.join("tokenizer").exists();
        let text = if toy {
            ensure!(
                model.join("text_encoder").is_dir(),
                "{}: neither an SDXL pipeline folder (no vae/) nor the built-in toy model (no text_encoder/)",
                model.display()
            );
            Text::Toy(Box::new(Conditioner::load(model, device)?))
        } else {
            let dir = crate::models::folder::component_dir(model, "vae")?;
            let (vae, config) = AutoencoderKL::from_dir(&dir, device, DType::F32)?;
            Text::Sdxl {
                prompts: Box::new(PromptEncoder::load(model, device, dtype)?),
                vae: Box::new(vae),
                scaling: config.scaling_factor,
                factor: config.scale_factor(),
            }
        };
        let dtype = if toy { DType::F32 } else { dtype };
        Ok(Self { text, scheduler: SchedulerConfig::read(model)?, device: device.clone(), dtype })
    }

    /// The UNet's own size (its `sample_size` in pixels), the toy model's 16.
    pub fn default_size(&self, unet_sample_size: Option<usize>) -> usize {
        match &self.text {
            Text::Sdxl { factor, .. } => unet_sample_size.unwrap_or(128) * factor,
            Text::Toy(_) => SIZE,
        }
    }

    /// The precision to load a UNet in for this model (the toy model is always f32).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Checks `size` against the model before any image is made.
    pub fn check(&self, unet: &UNet2DConditionModel, size: usize) -> Result<()> {
        match &self.text {
            Text::Toy(_) => ensure!(size == SIZE, "the built-in toy model makes {SIZE}×{SIZE} images, not {size}"),
            Text::Sdxl { factor, .. } => {
                // The VAE's factor times the UNet's downsampling (each down block but the last halves).
                let step = factor << unet.down_blocks.len().saturating_sub(1);
                ensure!(
                    size > 0 && size.is_multiple_of(step),
                    "size {size} must be a multiple of {step} for this model"
                );
            }
        }
        Ok(())
    }

    /// Image `seed_index` of suite prompt `prompt_index`: the initial noise depends on those
    /// two only, so every variant of a model, in `mapo eval` and in an experiment's
    /// evaluation, starts that image from the same noise.
    pub fn suite_image(
        &self,
        unet: &UNet2DConditionModel,
        (prompt_index, prompt): (usize, &str),
        seed_index: usize,
        s: &Settings,
    ) -> Result<image::RgbImage> {
        self.image(unet, prompt, (prompt_index * 1000 + seed_index) as u64, s)
    }

    /// One image of `prompt` from the initial noise of `seed`.
    pub fn image(&self, unet: &UNet2DConditionModel, prompt: &str, seed: u64, s: &Settings) -> Result<image::RgbImage> {
        let channels = unet.conv_in.weight.dims()[1];
        let sampler = self.scheduler.sampler("euler", s.steps)?;
        let mut images = match &self.text {
            Text::Toy(cond) => {
                let c = cond.encode(&[Some(prompt.to_string())], &self.device)?;
                let prompts = Prompts {
                    context: c.context,
                    text_embeds: c.text_embeds,
                    time_ids: Some(c.time_ids),
                    negative: None,
                    embedded_guidance: None,
                };
                let noise = initial_noise(seed, 1, [channels, SIZE, SIZE], &self.device);
                to_images(sample_latents(unet, sampler.as_ref(), &prompts, noise, s.guidance, &mut |_| {}))?
            }
            Text::Sdxl { prompts, vae, scaling, factor } => {
                // The renderer's precision: a model being trained may hold a bf16 base
                // (LoRA) and is still evaluated as the reference was.
                let dt = self.dtype();
                let (context, text_embeds) = prompts.encode(prompt);
                let (context, text_embeds) = (context.cast(dt), text_embeds.cast(dt));
                let side = s.size as f32;
                let time_ids = Tensor::<2>::from_data(
                    TensorData::new(vec![side, side, 0.0, 0.0, side, side], [1, 6]),
                    &self.device,
                );
                let prompts =
                    Prompts { context, text_embeds, time_ids: Some(time_ids), negative: None, embedded_guidance: None };
                let latent = s.size / factor;
                let noise = initial_noise(seed, 1, [channels, latent, latent], &self.device).cast(dt);
                let latents = sample_latents(unet, sampler.as_ref(), &prompts, noise, s.guidance, &mut |_| {});
                decode_images(latents.cast(DType::F32), vae, *scaling)?
            }
        };
        Ok(images.remove(0))
    }
}
