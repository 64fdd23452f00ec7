//! SDXL text-to-image: both tokenizers and text encoders, the UNet with Euler sampling and
//! classifier-free guidance, and the VAE, loaded from a diffusers pipeline folder.

use std::path::Path;

use anyhow::{Result, bail};
use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::Deserialize;

use super::ddim::DdimSchedule;
use super::euler::EulerSchedule;
use super::sampler::Sampler;
use super::schedule::NoiseSchedule;
use super::validate::{Prompts, sample_latents};
use crate::models::clip::ClipTextModel;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::folder::component_dir;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::vae::{AutoencoderKL, VaeConfig};

/// The keys of `scheduler/scheduler_config.json` that change sampling.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    #[serde(default = "beta_start")]
    pub beta_start: f64,
    #[serde(default = "beta_end")]
    pub beta_end: f64,
    #[serde(default = "scaled_linear")]
    pub beta_schedule: String,
    #[serde(default = "leading")]
    pub timestep_spacing: String,
    #[serde(default = "one")]
    pub steps_offset: usize,
    #[serde(default = "epsilon")]
    pub prediction_type: String,
    /// DDIM only (diffusers' DDIMScheduler defaults; SDXL's file sets both false).
    #[serde(default = "yes")]
    pub set_alpha_to_one: bool,
    #[serde(default = "yes")]
    pub clip_sample: bool,
    #[serde(default = "one_f")]
    pub clip_sample_range: f32,
}

fn yes() -> bool {
    true
}
fn one_f() -> f32 {
    1.0
}

fn thousand() -> usize {
    1000
}
fn beta_start() -> f64 {
    0.00085
}
fn beta_end() -> f64 {
    0.012
}
fn scaled_linear() -> String {
    "scaled_linear".into()
}
fn leading() -> String {
    "leading".into()
}
fn one() -> usize {
    1
}
fn epsilon() -> String {
    "epsilon".into()
}

impl SchedulerConfig {
    pub fn read(model: &Path) -> Result<Self> {
        let dir = crate::models::folder::model_folder(model)?.join("scheduler");
        let config: Self = if dir.join("scheduler_config.json").is_file() {
            let text = std::fs::read_to_string(dir.join("scheduler_config.json"))?;
            serde_json::from_str(&text)?
        } else {
            serde_json::from_str("{}")?
        };
        if config.beta_schedule != "scaled_linear" || config.prediction_type != "epsilon" {
            bail!(
                "{}: beta_schedule {:?} / prediction_type {:?} not supported (scaled_linear, epsilon)",
                dir.display(),
                config.beta_schedule,
                config.prediction_type
            );
        }
        Ok(config)
    }

    pub fn schedule(&self) -> NoiseSchedule {
        NoiseSchedule::scaled_linear(self.num_train_timesteps, self.beta_start, self.beta_end)
    }

    /// `euler` (SDXL's default) or `ddim`, set up as diffusers would from this config.
    pub fn sampler(&self, name: &str, steps: usize) -> Result<Box<dyn Sampler>> {
        let (s, spacing, offset) = (self.schedule(), self.timestep_spacing.as_str(), self.steps_offset);
        Ok(match name {
            "euler" => Box::new(EulerSchedule::new(&s, steps, spacing, offset)?),
            "ddim" => {
                let clip = self.clip_sample.then_some(self.clip_sample_range);
                Box::new(DdimSchedule::new(&s, steps, spacing, offset, self.set_alpha_to_one, clip)?)
            }
            other => bail!("unknown sampler {other:?} (euler or ddim)"),
        })
    }
}

/// SDXL's two tokenizers and text encoders.
pub struct PromptEncoder {
    pub tokenizer: ClipTokenizer,
    pub tokenizer_2: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub text_encoder_2: ClipTextModel,
    device: Device,
}

impl PromptEncoder {
    pub fn load(model: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let folder = crate::models::folder::model_folder(model)?;
        Ok(Self {
            tokenizer: ClipTokenizer::from_dir(&folder.join("tokenizer"))?,
            tokenizer_2: ClipTokenizer::from_dir(&folder.join("tokenizer_2"))?,
            text_encoder: ClipTextModel::from_dir(&component_dir(model, "text_encoder")?, device, dtype, false)?.0,
            text_encoder_2: ClipTextModel::from_dir(&component_dir(model, "text_encoder_2")?, device, dtype, true)?.0,
            device: device.clone(),
        })
    }

    /// `(encoder_hidden_states [1,77,D1+D2], text_embeds [1,P])` for one prompt: the two
    /// encoders' penultimate states side by side, and encoder 2's projected pooled output.
    pub fn encode(&self, prompt: &str) -> (Tensor<3>, Tensor<2>) {
        self.tokenizer.warn_if_truncated(prompt);
        let ids = |t: &ClipTokenizer| super::id_row(t.encode(prompt), &self.device);
        let one = self.text_encoder.forward(ids(&self.tokenizer));
        let two = self.text_encoder_2.forward(ids(&self.tokenizer_2));
        let context = Tensor::cat(vec![one.penultimate, two.penultimate], 2);
        (context, two.text_embeds.expect("text_encoder_2 has a projection"))
    }
}

pub struct SdxlPipeline {
    pub prompts: PromptEncoder,
    pub unet: UNet2DConditionModel,
    pub unet_config: UNetConfig,
    pub vae: AutoencoderKL,
    pub vae_config: VaeConfig,
    pub scheduler: SchedulerConfig,
    device: Device,
}

impl SdxlPipeline {
    /// `unet_dir` replaces the folder's own `unet/` (a fine-tuned one). The text encoders
    /// run in `dtype`, the VAE in f32 (SDXL's VAE overflows in f16).
    pub fn load(model: &Path, unet_dir: Option<&Path>, device: &Device, dtype: DType) -> Result<Self> {
        let unet_dir = match unet_dir {
            Some(d) => d.to_path_buf(),
            None => component_dir(model, "unet")?,
        };
        let (vae, vae_config) = AutoencoderKL::from_dir(&component_dir(model, "vae")?, device, DType::F32)?;
        let (unet, unet_config) = UNet2DConditionModel::from_dir(&unet_dir, device, dtype)?;
        Ok(Self {
            prompts: PromptEncoder::load(model, device, dtype)?,
            unet,
            unet_config,
            vae,
            vae_config,
            scheduler: SchedulerConfig::read(model)?,
            device: device.clone(),
        })
    }

    pub fn encode_prompt(&self, prompt: &str) -> (Tensor<3>, Tensor<2>) {
        self.prompts.encode(prompt)
    }

    /// The VAE's spatial factor: 2 per downsampling block.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// Final latents for one prompt from unit-variance `noise` [1,4,h,w]; an empty or absent
    /// negative prompt uses SDXL's all-zero negative embeddings.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_latents(
        &self,
        prompt: &str,
        negative: Option<&str>,
        sampler: &str,
        steps: usize,
        guidance: f64,
        noise: Tensor<4>,
        on_step: &mut dyn FnMut(usize),
    ) -> Result<Tensor<4>> {
        let [_, _, h, w] = noise.dims();
        let f = self.vae_scale_factor();
        let (height, width) = ((h * f) as f32, (w * f) as f32);
        let (context, text_embeds) = self.encode_prompt(prompt);
        let negative = negative.filter(|n| !n.is_empty()).map(|n| self.encode_prompt(n));
        let time_ids =
            Tensor::<2>::from_data(TensorData::new(vec![height, width, 0.0, 0.0, height, width], [1, 6]), &self.device);
        let prompts = Prompts { context, text_embeds, time_ids: Some(time_ids), negative, embedded_guidance: None };
        let sampler = self.scheduler.sampler(sampler, steps)?;
        Ok(sample_latents(&self.unet, sampler.as_ref(), &prompts, noise, guidance, on_step))
    }
}
