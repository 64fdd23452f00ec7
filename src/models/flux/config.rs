//! diffusers' `FluxTransformer2DModel` config (`transformer/config.json`), the keys that
//! shape the model, checked before anything is built.

use anyhow::{Result, ensure};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FluxTransformerConfig {
    /// 1 for FLUX.1: the pipeline packs 2×2 latent patches into 64-channel tokens itself.
    #[serde(default = "one")]
    pub patch_size: usize,
    /// Channels of a packed token (FLUX.1: 16 latent channels × 2×2 = 64).
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Double-stream blocks (FLUX.1: 19).
    pub num_layers: usize,
    /// Single-stream blocks (FLUX.1: 38).
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    /// Width of the text states fed in (T5's width, 4096).
    pub joint_attention_dim: usize,
    /// Width of the pooled text (CLIP L's pooler output, 768).
    pub pooled_projection_dim: usize,
    /// FLUX.1 [dev]: the guidance scale is an input embedded like the timestep.
    #[serde(default)]
    pub guidance_embeds: bool,
    /// Channels of a head given to each id axis (FLUX.1: 16, 56, 56); they sum to the head size.
    #[serde(default = "default_axes")]
    pub axes_dims_rope: Vec<usize>,
}

fn one() -> usize {
    1
}

fn default_axes() -> Vec<usize> {
    vec![16, 56, 56]
}

impl FluxTransformerConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Latent channels of the unpacked image (in_channels / 4).
    pub fn latent_channels(&self) -> usize {
        self.in_channels / 4
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.in_channels > 0
                && self.attention_head_dim > 0
                && self.num_attention_heads > 0
                && self.joint_attention_dim > 0
                && self.pooled_projection_dim > 0,
            "transformer config: sizes must be > 0"
        );
        ensure!(
            self.patch_size == 1,
            "transformer config: patch_size {} is not supported (FLUX.1 uses 1: the pipeline packs 2×2 patches)",
            self.patch_size
        );
        ensure!(
            self.in_channels.is_multiple_of(4) && self.out_channels() == self.in_channels,
            "transformer config: in_channels {} must be 4 × the latent channels (packed 2×2 patches) and out_channels \
             equal to it",
            self.in_channels
        );
        ensure!(
            self.axes_dims_rope.iter().sum::<usize>() == self.attention_head_dim
                && self.axes_dims_rope.iter().all(|d| d % 2 == 0 && *d > 0),
            "transformer config: axes_dims_rope {:?} must be even sizes summing to attention_head_dim {}",
            self.axes_dims_rope,
            self.attention_head_dim
        );
        Ok(())
    }
}
