//! `AutoencoderKL` configuration (`vae/config.json`).

use anyhow::{Result, ensure};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    #[serde(default)]
    pub act_fn: Option<String>,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

impl VaeConfig {
    /// The spatial factor between images and latents: 2 per downsampling block.
    pub fn scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        ensure!(n > 0, "vae config: block_out_channels is empty");
        for t in &self.down_block_types {
            ensure!(t == "DownEncoderBlock2D", "vae config: unsupported down block type {t}");
        }
        for t in &self.up_block_types {
            ensure!(t == "UpDecoderBlock2D", "vae config: unsupported up block type {t}");
        }
        ensure!(
            self.down_block_types.is_empty() || self.down_block_types.len() == n,
            "vae config: down_block_types must match block_out_channels"
        );
        ensure!(
            self.up_block_types.is_empty() || self.up_block_types.len() == n,
            "vae config: up_block_types must match block_out_channels"
        );
        ensure!(
            self.act_fn.as_deref().is_none_or(|a| a == "silu"),
            "vae config: act_fn {:?} is not supported",
            self.act_fn
        );
        for c in &self.block_out_channels {
            ensure!(c % self.norm_num_groups == 0, "vae config: channels {c} not divisible by norm_num_groups");
        }
        Ok(())
    }
}
