//! Sampling with precomputed prompt embeddings: Euler steps with classifier-free guidance
//! (SDXL's all-zero negative embeddings), then the VAE when the model folder has one.
//! The trainer uses it for validation images.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::{DType, Tensor, TensorData};

use super::noise::gaussian;
use super::sampler::Sampler;
use crate::models::denoiser::{Conditioning, Denoiser};
use crate::models::vae::{AutoencoderKL, VaeConfig};

/// Prompt conditioning for K images.
pub struct Prompts {
    pub context: Tensor<3>,
    /// Pooled text: SDXL's `text_embeds`, SD3's `pooled_projections`.
    pub text_embeds: Tensor<2>,
    /// SDXL's micro-conditioning; None for flow families.
    pub time_ids: Option<Tensor<2>>,
    /// The negative prompt's `(context, text_embeds)`; `None` is SDXL's all-zero negative.
    pub negative: Option<(Tensor<3>, Tensor<2>)>,
    /// FLUX.1 [dev]'s embedded guidance scale, the same for every image; None for other models.
    pub embedded_guidance: Option<f32>,
}

/// Unit-variance initial noise for `k` images, from `seed`.
pub fn initial_noise(seed: u64, k: usize, latent_shape: [usize; 3], device: &burn::tensor::Device) -> Tensor<4> {
    let [c, h, w] = latent_shape;
    Tensor::from_data(TensorData::new(gaussian(seed, k * c * h * w), [k, c, h, w]), device)
}

/// The denoiser's call with classifier-free guidance (when `guidance` > 1, as in diffusers'
/// pipelines: the batch is `[uncond; cond]`, SDXL's uncond all zeros without a negative
/// prompt) or the prompt alone, FLUX's embedded guidance on every row.
pub struct Guided {
    cond: Conditioning,
    /// Classifier-free guidance's scale; none at ≤ 1.
    cfg: Option<f64>,
    rows: usize,
}

impl Guided {
    pub fn new(prompts: &Prompts, guidance: f64) -> Self {
        let device = prompts.context.device();
        let k = prompts.context.dims()[0];
        let cfg = guidance > 1.0;
        let cond = if cfg {
            let (neg_context, neg_text) = match &prompts.negative {
                Some((c, t)) => (c.clone(), t.clone()),
                None => (prompts.context.zeros_like(), prompts.text_embeds.zeros_like()),
            };
            Conditioning {
                context: Tensor::cat(vec![neg_context, prompts.context.clone()], 0),
                pooled: Tensor::cat(vec![neg_text, prompts.text_embeds.clone()], 0),
                time_ids: prompts.time_ids.clone().map(|t| Tensor::cat(vec![t; 2], 0)),
                guidance: None,
            }
        } else {
            Conditioning {
                context: prompts.context.clone(),
                pooled: prompts.text_embeds.clone(),
                time_ids: prompts.time_ids.clone(),
                guidance: None,
            }
        };
        let rows = if cfg { 2 * k } else { k };
        let embedded = prompts
            .embedded_guidance
            .map(|g| Tensor::<1>::from_data(TensorData::new(vec![g; rows], [rows]), (&device, DType::F32)));
        Self { cond: Conditioning { guidance: embedded, ..cond }, cfg: cfg.then_some(guidance), rows }
    }

    /// The (guided) prediction for the model input `input` [K, C, h, w] at model time `t`.
    pub fn predict(&self, model: &impl Denoiser, input: Tensor<4>, t: f32) -> Tensor<4> {
        let (input, timesteps) = self.model_inputs(input, t);
        self.combine(model.predict(input, timesteps, &self.cond))
    }

    /// What the denoiser is called with for `input` at `t`: the rows (doubled for
    /// classifier-free guidance) and their times; [`Self::conditioning`] goes with them.
    pub fn model_inputs(&self, input: Tensor<4>, t: f32) -> (Tensor<4>, Tensor<1>) {
        let device = input.device();
        let input = if self.cfg.is_some() { Tensor::cat(vec![input; 2], 0) } else { input };
        let timesteps = Tensor::<1>::from_data(TensorData::new(vec![t; self.rows], [self.rows]), (&device, DType::F32));
        (input, timesteps)
    }

    pub fn conditioning(&self) -> &Conditioning {
        &self.cond
    }

    /// The guided prediction from the denoiser's prediction of [`Self::model_inputs`]' rows.
    pub fn combine(&self, pred: Tensor<4>) -> Tensor<4> {
        let Some(scale) = self.cfg else { return pred };
        let mut halves = pred.chunk(2, 0);
        let (pred_c, pred_u) = (halves.pop().expect("cond"), halves.pop().expect("uncond"));
        pred_u.clone() + (pred_c - pred_u).mul_scalar(scale)
    }
}

/// Final latents (scaled, as the denoiser sees them) for each prompt, from unit-variance
/// `noise` (diffusers' `latents` argument, before the scheduler's init sigma), after one
/// step per sampler timestep, with [`Guided`]'s guidance.
pub fn sample_latents(
    model: &impl Denoiser,
    sampler: &dyn Sampler,
    prompts: &Prompts,
    noise: Tensor<4>,
    guidance: f64,
    on_step: &mut dyn FnMut(usize),
) -> Tensor<4> {
    let guided = Guided::new(prompts, guidance);
    let mut x = noise.mul_scalar(sampler.init_noise_sigma());
    for (i, &t) in sampler.timesteps().iter().enumerate() {
        on_step(i);
        let pred = guided.predict(model, x.clone().mul_scalar(sampler.input_scale(i)), t);
        x = sampler.step(i, x, pred);
    }
    x
}

/// Latents as the denoiser sees them → pixels [K, 3, H, W] in about [-1, 1]: z / scaling
/// + shift (SD3 and FLUX shift; SDXL does not), then the decoder.
pub fn unscale_decode(latents: Tensor<4>, vae: &AutoencoderKL, config: &VaeConfig) -> Tensor<4> {
    let z = latents.div_scalar(config.scaling_factor);
    vae.decode(match config.shift_factor {
        Some(shift) => z.add_scalar(shift),
        None => z,
    })
}

/// Scaled latents [K, 4, h, w] → K 8-bit RGB images through the VAE.
pub fn decode_images(latents: Tensor<4>, vae: &AutoencoderKL, scaling: f64) -> Result<Vec<image::RgbImage>> {
    to_images(vae.decode(latents.div_scalar(scaling)))
}

/// Pixels [K, C, h, w] in [-1, 1] → K 8-bit RGB images (a 1-channel image is grey).
pub fn to_images(images: Tensor<4>) -> Result<Vec<image::RgbImage>> {
    let [k, c, h, w] = images.dims();
    let pixels = images
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok((0..k)
        .map(|i| {
            let at = |ch: usize, x: usize, y: usize| pixels[((i * c + ch.min(c - 1)) * h + y) * w + x];
            let px = |v: f32| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
            image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let (x, y) = (x as usize, y as usize);
                image::Rgb([px(at(0, x, y)), px(at(1, x, y)), px(at(2, x, y))])
            })
        })
        .collect())
}

/// Writes `latents.safetensors`, and one PNG per image when `vae` is given.
pub fn save_samples(latents: Tensor<4>, vae: Option<(&AutoencoderKL, &VaeConfig)>, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::models::io::write_tensors(
        &dir.join("latents.safetensors"),
        vec![("latents".into(), latents.clone().cast(DType::F32).into_data())],
    )?;
    let Some((vae, config)) = vae else { return Ok(()) };
    for (i, img) in to_images(unscale_decode(latents, vae, config))?.into_iter().enumerate() {
        let path = dir.join(format!("sample-{i}.png"));
        crate::util::save_image(&path, &img)?;
    }
    Ok(())
}
