//! diffusers' `SD3Transformer2DModel` config (`transformer/config.json`), the keys that
//! shape the model, checked before anything is built.

use anyhow::{Result, bail, ensure};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct SD3TransformerConfig {
    /// Latent side the position table's base grid was made for (SD3: 128).
    pub sample_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    /// Width of the text states fed in (T5's width, 4096).
    pub joint_attention_dim: usize,
    /// Width of the projected text states; the joint attention needs it equal to the
    /// transformer's width (heads × head_dim).
    pub caption_projection_dim: usize,
    pub pooled_projection_dim: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Side of the position table in patches (SD3: 192); inputs are cropped from its centre.
    pub pos_embed_max_size: usize,
    /// Blocks with MMDiT-X's second, image-only attention (SD3.5 Medium: 0..=12).
    #[serde(default)]
    pub dual_attention_layers: Vec<usize>,
    /// `"rms_norm"` (SD3.5) or none (SD3).
    #[serde(default)]
    pub qk_norm: Option<String>,
}

impl SD3TransformerConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    pub fn uses_qk_norm(&self) -> bool {
        self.qk_norm.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.patch_size > 0
                && self.in_channels > 0
                && self.num_layers > 0
                && self.attention_head_dim > 0
                && self.num_attention_heads > 0
                && self.joint_attention_dim > 0
                && self.pooled_projection_dim > 0
                && self.pos_embed_max_size > 0
                && self.sample_size >= self.patch_size,
            "transformer config: sizes must be > 0 and sample_size ≥ patch_size"
        );
        ensure!(
            self.inner_dim().is_multiple_of(4),
            "transformer config: heads × head_dim {} must be a multiple of 4 (the 2-D sin-cos position table)",
            self.inner_dim()
        );
        ensure!(
            self.caption_projection_dim == self.inner_dim(),
            "transformer config: caption_projection_dim {} must equal num_attention_heads × attention_head_dim = {} \
             (text and image tokens share the joint attention)",
            self.caption_projection_dim,
            self.inner_dim()
        );
        match self.qk_norm.as_deref() {
            None | Some("rms_norm") => {}
            Some(other) => {
                bail!("transformer config: qk_norm {other:?} is not supported (SD3 has none, SD3.5 \"rms_norm\")")
            }
        }
        if let Some(bad) = self.dual_attention_layers.iter().find(|&&i| i >= self.num_layers) {
            bail!(
                "transformer config: dual_attention_layers names block {bad}, but there are {} blocks",
                self.num_layers
            );
        }
        let mut seen = self.dual_attention_layers.clone();
        seen.sort_unstable();
        seen.dedup();
        ensure!(
            seen.len() == self.dual_attention_layers.len(),
            "transformer config: dual_attention_layers {:?} repeats a block",
            self.dual_attention_layers
        );
        Ok(())
    }
}
