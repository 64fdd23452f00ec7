//! A diffusers model's online task: prompts from a suite (as `mapo eval` reads them), the
//! family's text encoders for their conditioning (with the empty negative prompt for
//! classifier-free guidance, as the pipelines encode it), the VAE to decode the samples, and
//! the reward models of `eval` (`[online.reward_models]`). SD3 / SD3.5 for now; FLUX's
//! prompt encoding (and its embedded guidance) is not wired in yet.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Tensor};

use super::task::Task;
use crate::eval::resize::Rgb8;
use crate::eval::scorer::{Scorer, ScorerFiles, load_scorer};
use crate::eval::suite::load_suite;
use crate::family::Family;
use crate::models::folder::component_dir;
use crate::models::sd3::config::SD3TransformerConfig;
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::sample::sd3::Sd3PromptEncoder;
use crate::sample::validate::{Prompts, to_images, unscale_decode};
use crate::train::online_config::OnlineConfig;

pub struct SuiteTask {
    captions: Vec<String>,
    encoder: Sd3PromptEncoder,
    vae: AutoencoderKL,
    vae_config: VaeConfig,
    scorers: Vec<Box<dyn Scorer>>,
    latent: [usize; 3],
}

impl SuiteTask {
    pub fn load(model: &Path, online: &OnlineConfig, device: &Device) -> Result<Self> {
        let family = Family::detect(model)?;
        if family != Family::Sd3 {
            bail!(
                "{}: online training with a prompt suite supports SD3 / SD3.5 models for now; this is a {} model",
                model.display(),
                family.name()
            );
        }
        let path = online.prompts.as_deref().context("[online] prompts")?;
        let captions =
            load_suite(path, online.prompt_column.as_deref(), online.max_prompts).context("[online] prompts")?;
        let transformer_dir = component_dir(model, "transformer")?;
        let (config, _) = crate::models::config::read_config::<SD3TransformerConfig>(&transformer_dir)?;
        let encoder = Sd3PromptEncoder::load(model, config.joint_attention_dim, true, device, DType::F32)?;
        let (vae, vae_config) = AutoencoderKL::from_dir(&component_dir(model, "vae")?, device, DType::F32)?;
        let factor = vae_config.scale_factor();
        let size = online.size.unwrap_or(config.sample_size * factor);
        anyhow::ensure!(
            size.is_multiple_of(factor * config.patch_size),
            "[online] size {size}: must be a multiple of {} (the VAE's factor × the patch size)",
            factor * config.patch_size
        );
        let files =
            ScorerFiles { clip: online.clip_model.as_deref(), config: None, tokenizer: online.tokenizer.as_deref() };
        let mut scorers = Vec::new();
        for name in online.rewards.keys() {
            let file = online.reward_models.get(name).with_context(|| {
                format!("[online.rewards] {name}: give its model in [online.reward_models] {name} = \"PATH\"")
            })?;
            scorers.push(
                load_scorer(name, file, files, device).with_context(|| format!("[online.reward_models] {name}"))?,
            );
        }
        let latent = [vae_config.latent_channels, size / factor, size / factor];
        Ok(Self { captions, encoder, vae, vae_config, scorers, latent })
    }
}

impl Task for SuiteTask {
    fn captions(&self) -> &[String] {
        &self.captions
    }

    fn encode(&self, captions: &[String], _device: &Device) -> Result<Prompts> {
        let mut contexts = Vec::new();
        let mut pooled = Vec::new();
        for c in captions {
            let (context, p) = self.encoder.encode(c)?;
            contexts.push(context);
            pooled.push(p);
        }
        let (neg_context, neg_pooled) = self.encoder.encode("")?;
        let n = captions.len();
        Ok(Prompts {
            context: Tensor::cat(contexts, 0),
            text_embeds: Tensor::cat(pooled, 0),
            time_ids: None,
            negative: Some((neg_context.repeat_dim(0, n), neg_pooled.repeat_dim(0, n))),
            embedded_guidance: None,
        })
    }

    fn latent_shape(&self) -> [usize; 3] {
        self.latent
    }

    fn reward_names(&self) -> Vec<&'static str> {
        vec!["pickscore", "clip", "aesthetic", "hps"]
    }

    fn score(&self, names: &[String], latents: Tensor<4>, captions: &[String]) -> Result<Vec<Vec<f64>>> {
        let n = latents.dims()[0];
        let mut images = Vec::with_capacity(n);
        // One image at a time through the VAE: a 512² decode holds ~1 GB of activations.
        for i in 0..n {
            let pixels = unscale_decode(latents.clone().narrow(0, i, 1), &self.vae, &self.vae_config);
            images.extend(to_images(pixels)?.into_iter().map(Rgb8::from));
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let scorer = self.scorers.iter().find(|s| s.name() == name).with_context(|| format!("reward {name}"))?;
            out.push(scorer.score(&images, captions)?);
        }
        Ok(out)
    }
}
