//! `CLIPTextConfig` as transformers writes it in `text_encoder*/config.json`.

use anyhow::{Result, ensure};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "seventy_seven")]
    pub max_position_embeddings: usize,
    /// quick_gelu (CLIP ViT-L) or gelu (OpenCLIP bigG).
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// 2 is transformers' legacy value: the pooled token is then argmax(input_ids).
    #[serde(default = "two")]
    pub eos_token_id: i64,
    /// transformers' class (`CLIPTextModel`, `CLIPTextModelWithProjection`), when saved.
    #[serde(default)]
    pub architectures: Vec<String>,
}

impl ClipTextConfig {
    /// Whether the folder's class has `text_projection`, when the config says its class.
    pub fn declares_projection(&self) -> Option<bool> {
        self.architectures.iter().find_map(|a| match a.as_str() {
            "CLIPTextModelWithProjection" => Some(true),
            "CLIPTextModel" => Some(false),
            _ => None,
        })
    }
}

fn seventy_seven() -> usize {
    77
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}
fn two() -> i64 {
    2
}

impl ClipTextConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu"),
            "text encoder config: hidden_act {:?} is not supported (quick_gelu or gelu)",
            self.hidden_act
        );
        ensure!(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "text encoder config: hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        ensure!(self.num_hidden_layers >= 2, "text encoder config: SDXL uses the penultimate layer; need ≥ 2 layers");
        Ok(())
    }
}
