//! transformers' `T5Config`, the keys the encoder reads.

use anyhow::{Result, ensure};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    #[serde(default = "max_distance")]
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// `gated-gelu` (T5 v1.1, SD3's and FLUX's T5-XXL); `relu` (the original T5) is refused.
    pub feed_forward_proj: String,
}

fn max_distance() -> usize {
    128
}

impl T5Config {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.feed_forward_proj == "gated-gelu",
            "feed_forward_proj {:?}: only T5 v1.1's gated-gelu (SD3's and FLUX's T5-XXL) is supported",
            self.feed_forward_proj
        );
        ensure!(self.num_heads > 0 && self.d_kv > 0 && self.d_model > 0, "T5 sizes must be > 0");
        ensure!(
            self.relative_attention_num_buckets >= 4 && self.relative_attention_max_distance >= 8,
            "relative_attention_num_buckets {} / max_distance {} are too small",
            self.relative_attention_num_buckets,
            self.relative_attention_max_distance
        );
        Ok(())
    }
}

/// Whether a text encoder's `config.json` is T5's (`model_type`, or an `architectures` entry):
/// SD3's third encoder and FLUX's second are T5, the others CLIP.
pub fn is_t5(raw: &serde_json::Value) -> bool {
    let arch = raw["architectures"].as_array().into_iter().flatten().filter_map(|a| a.as_str());
    raw["model_type"].as_str() == Some("t5") || arch.into_iter().any(|a| a.starts_with("T5"))
}
