//! What every family's denoiser is called through: noisy latents, the model's time, and a
//! family's conditioning (text states, pooled text, SDXL's size/crop ids). Sampling and the
//! training step are written against [`Denoiser`]; `family` picks the implementation.

use burn::tensor::Tensor;

use super::flux::FluxTransformer2DModel;
use super::sd3::SD3Transformer2DModel;
use super::unet::{TextTime, UNet2DConditionModel};

/// A family's conditioning of one batch, on the denoiser's device.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// Per-token text states: [B, L, D].
    pub context: Tensor<3>,
    /// Pooled text embedding: [B, P].
    pub pooled: Tensor<2>,
    /// SDXL's micro-conditioning `time_ids` [B, 6] (size and crop); None for other families.
    pub time_ids: Option<Tensor<2>>,
    /// FLUX.1 [dev]'s embedded guidance scale [B] (the raw scale); None for other models.
    pub guidance: Option<Tensor<1>>,
}

/// One call of a family's denoiser: the prediction (ε or velocity, as the objective says)
/// for noisy latents at the model's timesteps.
pub trait Denoiser {
    fn predict(&self, noisy: Tensor<4>, timestep: Tensor<1>, cond: &Conditioning) -> Tensor<4>;
}

impl Denoiser for UNet2DConditionModel {
    fn predict(&self, noisy: Tensor<4>, timestep: Tensor<1>, cond: &Conditioning) -> Tensor<4> {
        let extra = cond
            .time_ids
            .as_ref()
            .map(|time_ids| TextTime { text_embeds: cond.pooled.clone(), time_ids: time_ids.clone() });
        self.forward_at(noisy, timestep, cond.context.clone(), extra.as_ref())
    }
}

impl Denoiser for SD3Transformer2DModel {
    fn predict(&self, noisy: Tensor<4>, timestep: Tensor<1>, cond: &Conditioning) -> Tensor<4> {
        self.forward(noisy, timestep, cond.context.clone(), cond.pooled.clone())
    }
}

impl Denoiser for FluxTransformer2DModel {
    /// Unpacked latents at the model time σ·1000; a [dev] model needs `cond.guidance`.
    fn predict(&self, noisy: Tensor<4>, timestep: Tensor<1>, cond: &Conditioning) -> Tensor<4> {
        assert!(
            cond.guidance.is_some() || !self.guidance_embeds(),
            "a guidance-embedded FLUX transformer is called without a guidance scale"
        );
        self.forward_latents(noisy, timestep, cond.context.clone(), cond.pooled.clone(), cond.guidance.clone())
    }
}
