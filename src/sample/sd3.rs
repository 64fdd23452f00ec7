//! SD3 / SD3.5 text-to-image as diffusers' `StableDiffusion3Pipeline`: two CLIPs with
//! projection and T5 for the text, the MMDiT transformer sampled with flow-matching Euler
//! steps and classifier-free guidance (the empty negative prompt encoded as text), then the
//! 16-channel VAE (latents unscaled and unshifted).

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Tensor};
use serde::Deserialize;

use super::flow_euler::FlowMatchEuler;
use super::validate::{Prompts, sample_latents};
use crate::models::clip::ClipTextModel;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::folder::{component_dir, model_folder};
use crate::models::sd3::{SD3Transformer2DModel, SD3TransformerConfig};
use crate::models::t5::T5EncoderModel;
use crate::models::t5::tokenizer::T5Tokenizer;
use crate::models::vae::{AutoencoderKL, VaeConfig};

/// SD3's default `max_sequence_length` (T5 tokens).
pub const MAX_SEQUENCE_LENGTH: usize = 256;

/// The keys of `FlowMatchEulerDiscreteScheduler`'s config that SD3 sampling reads.
#[derive(Debug, Clone, Deserialize)]
pub struct FlowSchedulerConfig {
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    #[serde(default = "one")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    /// FLUX's dynamic shifting: mu from the image's token count between these.
    #[serde(default = "base_seq_len")]
    pub base_image_seq_len: usize,
    #[serde(default = "max_seq_len")]
    pub max_image_seq_len: usize,
    #[serde(default = "base_shift")]
    pub base_shift: f64,
    #[serde(default = "max_shift")]
    pub max_shift: f64,
}

fn base_seq_len() -> usize {
    256
}
fn max_seq_len() -> usize {
    4096
}
fn base_shift() -> f64 {
    0.5
}
fn max_shift() -> f64 {
    1.15
}

fn thousand() -> usize {
    1000
}
fn one() -> f64 {
    1.0
}

impl FlowSchedulerConfig {
    /// The folder's scheduler config, for SD3 (static shift only) or FLUX (`dynamic`: the
    /// dynamic-shifting keys are checked too).
    pub fn read_for(model: &Path, dynamic_allowed: bool) -> Result<Self> {
        let path = model_folder(model)?.join("scheduler").join("scheduler_config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let config: Self =
            serde_json::from_str(&text).with_context(|| format!("{}: not a scheduler config", path.display()))?;
        if config.use_dynamic_shifting && !dynamic_allowed {
            bail!("{}: use_dynamic_shifting is FLUX's; SD3 sampling uses the static shift", path.display());
        }
        anyhow::ensure!(config.shift.is_finite() && config.shift > 0.0, "{}: shift must be > 0", path.display());
        anyhow::ensure!(
            config.max_image_seq_len > config.base_image_seq_len
                && config.base_shift.is_finite()
                && config.max_shift.is_finite(),
            "{}: max_image_seq_len must exceed base_image_seq_len, and the shifts must be finite",
            path.display()
        );
        Ok(config)
    }

    pub fn read(model: &Path) -> Result<Self> {
        Self::read_for(model, false)
    }

    pub fn sampler(&self, steps: usize) -> Result<FlowMatchEuler> {
        FlowMatchEuler::new(steps, self.shift, self.num_train_timesteps)
    }

    /// FLUX's `mu` for an image of `image_seq_len` packed tokens.
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        super::flow_euler::calculate_shift(
            image_seq_len,
            self.base_image_seq_len,
            self.max_image_seq_len,
            self.base_shift,
            self.max_shift,
        )
    }

    /// FLUX's sampler for an image of `image_seq_len` packed tokens (mu is computed and
    /// used only with dynamic shifting, as diffusers does).
    pub fn flux_sampler(&self, steps: usize, image_seq_len: usize) -> Result<FlowMatchEuler> {
        let mu = self.use_dynamic_shifting.then(|| self.mu(image_seq_len));
        FlowMatchEuler::flux(steps, mu, self.shift, self.num_train_timesteps)
    }
}

/// SD3's three tokenizers and text encoders (T5 optional: zeros in its place, as diffusers
/// does without `text_encoder_3`).
pub struct Sd3PromptEncoder {
    pub tokenizer: ClipTokenizer,
    pub tokenizer_2: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub text_encoder_2: ClipTextModel,
    pub t5: Option<(T5Tokenizer, T5EncoderModel)>,
    /// The transformer's `joint_attention_dim`: T5's width, which the CLIP states are padded to.
    pub joint_dim: usize,
    pub max_sequence_length: usize,
    device: Device,
}

impl Sd3PromptEncoder {
    /// `with_t5`: load `text_encoder_3` when the folder has it (false saves its memory).
    pub fn load(model: &Path, joint_dim: usize, with_t5: bool, device: &Device, dtype: DType) -> Result<Self> {
        let folder = model_folder(model)?;
        let clip = |name: &str| ClipTextModel::from_dir(&component_dir(model, name)?, device, dtype, true).map(|m| m.0);
        let t5 = if with_t5 && folder.join("text_encoder_3").join("config.json").is_file() {
            let tokenizer = T5Tokenizer::from_dir(&folder.join("tokenizer_3"))?;
            let (encoder, config) = T5EncoderModel::from_dir(&folder.join("text_encoder_3"), device, dtype)?;
            anyhow::ensure!(
                config.d_model == joint_dim,
                "{}: T5's d_model {} differs from the transformer's joint_attention_dim {joint_dim}",
                folder.display(),
                config.d_model
            );
            Some((tokenizer, encoder))
        } else {
            None
        };
        Ok(Self {
            tokenizer: ClipTokenizer::from_dir(&folder.join("tokenizer"))?,
            tokenizer_2: ClipTokenizer::from_dir(&folder.join("tokenizer_2"))?,
            text_encoder: clip("text_encoder")?,
            text_encoder_2: clip("text_encoder_2")?,
            t5,
            joint_dim,
            max_sequence_length: MAX_SEQUENCE_LENGTH,
            device: device.clone(),
        })
    }

    /// `(prompt_embeds [1, 77 + max_sequence_length, joint_dim], pooled [1, P1 + P2])`:
    /// both CLIPs' penultimate states side by side, zero-padded to T5's width, then T5's
    /// states (no attention mask, padding included); pooled = both projected pooled outputs.
    pub fn encode(&self, prompt: &str) -> Result<(Tensor<3>, Tensor<2>)> {
        self.tokenizer.warn_if_truncated(prompt);
        let ids = |ids: Vec<i64>| super::id_row(ids, &self.device);
        let one = self.text_encoder.forward(ids(self.tokenizer.encode(prompt)));
        let two = self.text_encoder_2.forward(ids(self.tokenizer_2.encode(prompt)));
        let projected = "loaded with text_projection";
        let pooled = Tensor::cat(vec![one.text_embeds.expect(projected), two.text_embeds.expect(projected)], 1);
        let clip = Tensor::cat(vec![one.penultimate, two.penultimate], 2);
        let [_, l, d] = clip.dims();
        if d > self.joint_dim {
            bail!("the CLIP states are {d} wide, more than the transformer's joint_attention_dim {}", self.joint_dim);
        }
        let pad = Tensor::zeros([1, l, self.joint_dim - d], (&self.device, clip.dtype()));
        let clip = Tensor::cat(vec![clip, pad], 2);
        let n = self.max_sequence_length;
        let t5 = match &self.t5 {
            Some((tokenizer, encoder)) => {
                tokenizer.warn_if_truncated(prompt, n);
                encoder.forward(ids(tokenizer.encode(prompt, n)?)).cast(clip.dtype())
            }
            None => Tensor::zeros([1, n, self.joint_dim], (&self.device, clip.dtype())),
        };
        Ok((Tensor::cat(vec![clip, t5], 1), pooled))
    }
}

pub struct Sd3Pipeline {
    pub prompts: Sd3PromptEncoder,
    pub transformer: SD3Transformer2DModel,
    pub transformer_config: SD3TransformerConfig,
    pub vae: AutoencoderKL,
    pub vae_config: VaeConfig,
    pub scheduler: FlowSchedulerConfig,
}

impl Sd3Pipeline {
    /// `transformer_dir` replaces the folder's own `transformer/` (a fine-tuned one). The
    /// text encoders and transformer run in `dtype`, the VAE in f32.
    pub fn load(
        model: &Path,
        transformer_dir: Option<&Path>,
        with_t5: bool,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let dir = match transformer_dir {
            Some(d) => d.to_path_buf(),
            None => component_dir(model, "transformer")?,
        };
        let (transformer, transformer_config) = SD3Transformer2DModel::from_dir(&dir, device, dtype)?;
        let (vae, vae_config) = AutoencoderKL::from_dir(&component_dir(model, "vae")?, device, DType::F32)?;
        anyhow::ensure!(
            vae_config.latent_channels == transformer_config.in_channels,
            "{}: the VAE has {} latent channels, the transformer takes {}",
            model.display(),
            vae_config.latent_channels,
            transformer_config.in_channels
        );
        let joint = transformer_config.joint_attention_dim;
        Ok(Self {
            prompts: Sd3PromptEncoder::load(model, joint, with_t5, device, dtype)?,
            transformer,
            transformer_config,
            vae,
            vae_config,
            scheduler: FlowSchedulerConfig::read(model)?,
        })
    }

    /// The VAE's spatial factor: 2 per downsampling block.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// Final latents for one prompt from unit-variance `noise` [1,C,h,w]. With guidance > 1
    /// the negative prompt (empty when absent) is encoded as text, as diffusers does for SD3.
    pub fn generate_latents(
        &self,
        prompt: &str,
        negative: Option<&str>,
        steps: usize,
        guidance: f64,
        noise: Tensor<4>,
        on_step: &mut dyn FnMut(usize),
    ) -> Result<Tensor<4>> {
        let [_, _, h, w] = noise.dims();
        self.transformer.check_latents(h, w)?;
        let (context, text_embeds) = self.prompts.encode(prompt)?;
        let negative = if guidance > 1.0 { Some(self.prompts.encode(negative.unwrap_or(""))?) } else { None };
        let prompts = Prompts { context, text_embeds, time_ids: None, negative, embedded_guidance: None };
        let sampler = self.scheduler.sampler(steps)?;
        Ok(sample_latents(&self.transformer, &sampler, &prompts, noise, guidance, on_step))
    }

    /// Latents as the transformer sees them → pixels [B, 3, H, W] in about [-1, 1]:
    /// z / scaling_factor + shift_factor, then the VAE's decoder.
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        super::validate::unscale_decode(latents, &self.vae, &self.vae_config)
    }
}
