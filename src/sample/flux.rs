//! FLUX.1 text-to-image as diffusers' `FluxPipeline`: CLIP L's pooled output and T5's states
//! for the text, the transformer sampled with flow-matching Euler steps on a schedule
//! shifted by the image's token count (dynamic shifting, [dev]) or statically ([schnell]),
//! the guidance scale embedded in the model ([dev]) instead of classifier-free guidance,
//! optional true CFG with a negative prompt, then the 16-channel VAE.

use std::path::Path;

use anyhow::{Result, bail};
use burn::tensor::{DType, Device, Tensor};

use super::sd3::FlowSchedulerConfig;
use super::validate::{Prompts, sample_latents};
use crate::models::clip::ClipTextModel;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::flux::{FluxTransformer2DModel, FluxTransformerConfig, pack};
use crate::models::folder::{component_dir, model_folder};
use crate::models::t5::T5EncoderModel;
use crate::models::t5::tokenizer::T5Tokenizer;
use crate::models::vae::{AutoencoderKL, VaeConfig};

/// FLUX's default `max_sequence_length` (T5 tokens).
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// FLUX.1 [dev]'s default embedded guidance scale.
pub const DEFAULT_GUIDANCE: f64 = 3.5;

/// FLUX's two tokenizers and text encoders: CLIP L (pooled output, no projection) and T5.
pub struct FluxPromptEncoder {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub tokenizer_2: T5Tokenizer,
    pub text_encoder_2: T5EncoderModel,
    pub max_sequence_length: usize,
    device: Device,
}

impl FluxPromptEncoder {
    /// `joint_dim`: the transformer's `joint_attention_dim`, which T5's width must equal;
    /// `pooled_dim`: its `pooled_projection_dim`, CLIP's width.
    pub fn load(model: &Path, joint_dim: usize, pooled_dim: usize, device: &Device, dtype: DType) -> Result<Self> {
        let folder = model_folder(model)?;
        let (text_encoder, clip) =
            ClipTextModel::from_dir(&component_dir(model, "text_encoder")?, device, dtype, false)?;
        let (text_encoder_2, t5) = T5EncoderModel::from_dir(&component_dir(model, "text_encoder_2")?, device, dtype)?;
        anyhow::ensure!(
            t5.d_model == joint_dim && clip.hidden_size == pooled_dim,
            "{}: T5's width {} and CLIP's {} must equal the transformer's joint_attention_dim {joint_dim} and \
             pooled_projection_dim {pooled_dim}",
            folder.display(),
            t5.d_model,
            clip.hidden_size
        );
        Ok(Self {
            tokenizer: ClipTokenizer::from_dir(&folder.join("tokenizer"))?,
            text_encoder,
            tokenizer_2: T5Tokenizer::from_dir(&folder.join("tokenizer_2"))?,
            text_encoder_2,
            max_sequence_length: MAX_SEQUENCE_LENGTH,
            device: device.clone(),
        })
    }

    /// `(prompt_embeds [1, max_sequence_length, joint_dim], pooled [1, P])`: T5's last hidden
    /// states (no attention mask, padding included) and CLIP's pooled output (final layer
    /// norm at the end-of-text token), 77 CLIP tokens.
    pub fn encode(&self, prompt: &str) -> Result<(Tensor<3>, Tensor<2>)> {
        self.tokenizer.warn_if_truncated(prompt);
        let ids = |ids: Vec<i64>| super::id_row(ids, &self.device);
        let pooled = self.text_encoder.forward(ids(self.tokenizer.encode(prompt))).pooled;
        let n = self.max_sequence_length;
        self.tokenizer_2.warn_if_truncated(prompt, n);
        let states = self.text_encoder_2.forward(ids(self.tokenizer_2.encode(prompt, n)?));
        Ok((states, pooled))
    }
}

pub struct FluxPipeline {
    pub prompts: FluxPromptEncoder,
    pub transformer: FluxTransformer2DModel,
    pub transformer_config: FluxTransformerConfig,
    pub vae: AutoencoderKL,
    pub vae_config: VaeConfig,
    pub scheduler: FlowSchedulerConfig,
}

impl FluxPipeline {
    /// `transformer_dir` replaces the folder's own `transformer/` (a fine-tuned one). The
    /// text encoders and transformer run in `dtype`, the VAE in f32.
    pub fn load(model: &Path, transformer_dir: Option<&Path>, device: &Device, dtype: DType) -> Result<Self> {
        let dir = match transformer_dir {
            Some(d) => d.to_path_buf(),
            None => component_dir(model, "transformer")?,
        };
        let (transformer, transformer_config) = FluxTransformer2DModel::from_dir(&dir, device, dtype)?;
        let (vae, vae_config) = AutoencoderKL::from_dir(&component_dir(model, "vae")?, device, DType::F32)?;
        anyhow::ensure!(
            vae_config.latent_channels == transformer_config.latent_channels(),
            "{}: the VAE has {} latent channels, the transformer takes {} (packed: {} channels)",
            model.display(),
            vae_config.latent_channels,
            transformer_config.latent_channels(),
            transformer_config.in_channels
        );
        let (joint, pooled) = (transformer_config.joint_attention_dim, transformer_config.pooled_projection_dim);
        Ok(Self {
            prompts: FluxPromptEncoder::load(model, joint, pooled, device, dtype)?,
            transformer,
            transformer_config,
            vae,
            vae_config,
            scheduler: FlowSchedulerConfig::read_for(model, true)?,
        })
    }

    /// The VAE's spatial factor: 2 per downsampling block.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae_config.scale_factor()
    }

    /// Final (unpacked) latents for one prompt from unit-variance `noise` [1,C,h,w].
    /// `guidance`: the embedded scale ([dev]; ignored by [schnell]). With `true_cfg` > 1 and
    /// a negative prompt, each step also runs the negative prompt and combines
    /// neg + true_cfg·(pos − neg), as diffusers' `true_cfg_scale`.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_latents(
        &self,
        prompt: &str,
        negative: Option<&str>,
        steps: usize,
        guidance: f64,
        true_cfg: f64,
        noise: Tensor<4>,
        on_step: &mut dyn FnMut(usize),
    ) -> Result<Tensor<4>> {
        let [_, c, h, w] = noise.dims();
        pack::check_latents("latents", h, w)?;
        if c != self.transformer.latent_channels() {
            bail!("latents: {c} channels, the transformer takes {}", self.transformer.latent_channels());
        }
        let (context, text_embeds) = self.prompts.encode(prompt)?;
        let cfg = match negative {
            Some(neg) if true_cfg > 1.0 => Some((neg, true_cfg)),
            _ => None,
        };
        let negative = cfg.map(|(neg, _)| self.prompts.encode(neg)).transpose()?;
        let embedded_guidance = self.transformer.guidance_embeds().then_some(guidance as f32);
        let prompts = Prompts { context, text_embeds, time_ids: None, negative, embedded_guidance };
        let sampler = self.scheduler.flux_sampler(steps, (h / 2) * (w / 2))?;
        let scale = cfg.map_or(1.0, |(_, s)| s);
        Ok(sample_latents(&self.transformer, &sampler, &prompts, noise, scale, on_step))
    }

    /// Latents as the transformer sees them → pixels [B, 3, H, W] in about [-1, 1]:
    /// z / scaling_factor + shift_factor, then the VAE's decoder.
    pub fn decode(&self, latents: Tensor<4>) -> Tensor<4> {
        super::validate::unscale_decode(latents, &self.vae, &self.vae_config)
    }
}
