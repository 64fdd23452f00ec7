//! SDXL's `AutoencoderKL`, built from a diffusers `vae/config.json`.

pub mod coder;
pub mod config;
pub mod mid;

use std::path::Path;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};

use self::coder::{Decoder, Encoder};
pub use self::config::VaeConfig;
use crate::models::nn::Conv2d;
use crate::models::weights::Weights;

#[derive(Module, Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKL {
    pub fn load(cfg: &VaeConfig, w: &Weights) -> Result<Self> {
        cfg.validate()?;
        let l = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::load(&w.pp("encoder"), cfg),
            decoder: Decoder::load(&w.pp("decoder"), cfg),
            quant_conv: cfg.use_quant_conv.then(|| Conv2d::load(&w.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0)),
            post_quant_conv: cfg.use_post_quant_conv.then(|| Conv2d::load(&w.pp("post_quant_conv"), l, l, 1, 1, 0)),
        })
    }

    pub fn from_dir(dir: &Path, device: &Device, dtype: DType) -> Result<(Self, VaeConfig)> {
        Weights::load_dir(dir, &["diffusion_pytorch_model"], device, dtype, Self::load)
    }

    /// The latent distribution of images in [-1, 1]: `(mean, logvar)`, unscaled, with
    /// `logvar` clamped to [-30, 20] as diffusers' `DiagonalGaussianDistribution` does.
    pub fn encode(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let mut moments = self.encoder.forward(x);
        if let Some(q) = &self.quant_conv {
            moments = q.forward(moments);
        }
        let mut halves = moments.chunk(2, 1);
        let logvar = halves.pop().expect("two halves").clamp(-30.0, 20.0);
        (halves.pop().expect("two halves"), logvar)
    }

    /// Images from unscaled latents (already divided by the scaling factor).
    pub fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z),
            None => z,
        };
        self.decoder.forward(z)
    }
}
