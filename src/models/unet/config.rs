//! `UNet2DConditionModel` configuration, as diffusers writes it in `unet/config.json`.

use anyhow::{Result, bail, ensure};
use serde::Deserialize;

use crate::models::config::OneOrMany;

#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "four")]
    pub in_channels: usize,
    #[serde(default = "four")]
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub mid_block_type: Option<String>,
    pub block_out_channels: Vec<usize>,
    /// The latent size the model was trained at (diffusers' default generation size / 8).
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "two")]
    pub layers_per_block: OneOrMany<usize>,
    #[serde(default = "one_layer")]
    pub transformer_layers_per_block: OneOrMany<usize>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<Vec<usize>>>,
    #[serde(default = "eight")]
    pub attention_head_dim: OneOrMany<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<OneOrMany<usize>>,
    pub cross_attention_dim: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    // Variants of the family that SDXL does not use; checked in `validate`.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    pub only_cross_attention: Option<OneOrMany<bool>>,
    #[serde(default)]
    pub dual_cross_attention: Option<bool>,
    #[serde(default)]
    pub center_input_sample: Option<bool>,
    #[serde(default)]
    pub time_embedding_type: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub attention_type: Option<String>,
    #[serde(default)]
    pub resnet_skip_time_act: Option<bool>,
    #[serde(default)]
    pub resnet_out_scale_factor: Option<f64>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    #[serde(default)]
    pub act_fn: Option<String>,
}

fn four() -> usize {
    4
}
fn three() -> usize {
    3
}
fn two() -> OneOrMany<usize> {
    OneOrMany::One(2)
}
fn one_layer() -> OneOrMany<usize> {
    OneOrMany::One(1)
}
fn eight() -> OneOrMany<usize> {
    OneOrMany::One(8)
}
fn thirty_two() -> usize {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn one_f() -> f64 {
    1.0
}

/// What one down or up block contains, resolved from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockPlan {
    pub cross_attention: bool,
    /// Transformer layers of each attention (one entry per resnet when cross-attending).
    pub transformer_layers: Vec<usize>,
    pub heads: usize,
    pub layers: usize,
}

impl UNetConfig {
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        ensure!(n > 0, "block_out_channels is empty");
        ensure!(self.down_block_types.len() == n, "down_block_types must have one entry per block_out_channels");
        ensure!(self.up_block_types.len() == n, "up_block_types must have one entry per block_out_channels");
        let unsupported = |what: &str, value: &dyn std::fmt::Debug| -> Result<()> {
            bail!("unet config: {what} = {value:?} is not supported (mapo implements the SDXL family)")
        };
        if let Some(v) = &self.class_embed_type {
            unsupported("class_embed_type", v)?;
        }
        if let Some(v) = &self.encoder_hid_dim_type {
            unsupported("encoder_hid_dim_type", v)?;
        }
        if let Some(v) = &self.time_cond_proj_dim {
            unsupported("time_cond_proj_dim", v)?;
        }
        if let Some(v) = &self.timestep_post_act {
            unsupported("timestep_post_act", v)?;
        }
        if let Some(v) = &self.time_embedding_act_fn {
            unsupported("time_embedding_act_fn", v)?;
        }
        if let Some(v) = &self.cross_attention_norm {
            unsupported("cross_attention_norm", v)?;
        }
        if self.resnet_time_scale_shift.as_deref().is_some_and(|s| s != "default") {
            unsupported("resnet_time_scale_shift", &self.resnet_time_scale_shift)?;
        }
        if self.time_embedding_type.as_deref().is_some_and(|s| s != "positional") {
            unsupported("time_embedding_type", &self.time_embedding_type)?;
        }
        if self.attention_type.as_deref().is_some_and(|s| s != "default") {
            unsupported("attention_type", &self.attention_type)?;
        }
        if self.act_fn.as_deref().is_some_and(|s| s != "silu") {
            unsupported("act_fn", &self.act_fn)?;
        }
        if self.dual_cross_attention == Some(true) {
            unsupported("dual_cross_attention", &true)?;
        }
        if self.center_input_sample == Some(true) {
            unsupported("center_input_sample", &true)?;
        }
        if self.resnet_skip_time_act == Some(true) {
            unsupported("resnet_skip_time_act", &true)?;
        }
        if self.resnet_out_scale_factor.is_some_and(|f| f != 1.0) {
            unsupported("resnet_out_scale_factor", &self.resnet_out_scale_factor)?;
        }
        if let Some(oca) = &self.only_cross_attention
            && oca.per_block(n, "only_cross_attention")?.iter().any(|b| *b)
        {
            unsupported("only_cross_attention", oca)?;
        }
        if let Some(t) = &self.mid_block_type
            && t != "UNetMidBlock2DCrossAttn"
        {
            unsupported("mid_block_type", t)?;
        }
        match self.addition_embed_type.as_deref() {
            None => {}
            Some("text_time") => {
                ensure!(self.addition_time_embed_dim.is_some(), "text_time needs addition_time_embed_dim");
                ensure!(
                    self.projection_class_embeddings_input_dim.is_some(),
                    "text_time needs projection_class_embeddings_input_dim"
                );
            }
            Some(other) => unsupported("addition_embed_type", &other)?,
        }
        for t in &self.down_block_types {
            ensure!(matches!(t.as_str(), "DownBlock2D" | "CrossAttnDownBlock2D"), "unsupported down block type {t}");
        }
        for t in &self.up_block_types {
            ensure!(matches!(t.as_str(), "UpBlock2D" | "CrossAttnUpBlock2D"), "unsupported up block type {t}");
        }
        for c in &self.block_out_channels {
            ensure!(
                c % self.norm_num_groups == 0,
                "block channels {c} not divisible by norm_num_groups {}",
                self.norm_num_groups
            );
        }
        ensure!(self.conv_in_kernel % 2 == 1 && self.conv_out_kernel % 2 == 1, "conv kernels must be odd");
        self.down_plans()?;
        self.up_plans()?;
        Ok(())
    }

    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(self.block_out_channels[0] * 4)
    }

    /// diffusers: `num_attention_heads = num_attention_heads or attention_head_dim` — the
    /// config's `attention_head_dim` is, for SDXL, the number of heads.
    fn heads(&self) -> Result<Vec<usize>> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.per_block(n, "num_attention_heads"),
            None => self.attention_head_dim.per_block(n, "attention_head_dim"),
        }
    }

    pub fn down_plans(&self) -> Result<Vec<BlockPlan>> {
        let n = self.block_out_channels.len();
        let heads = self.heads()?;
        let layers = self.layers_per_block.per_block(n, "layers_per_block")?;
        let tl = self.transformer_layers_per_block.per_block(n, "transformer_layers_per_block")?;
        Ok((0..n)
            .map(|i| BlockPlan {
                cross_attention: self.down_block_types[i] == "CrossAttnDownBlock2D",
                transformer_layers: vec![tl[i]; layers[i]],
                heads: heads[i],
                layers: layers[i],
            })
            .collect())
    }

    pub fn mid_plan(&self) -> Result<BlockPlan> {
        let n = self.block_out_channels.len();
        let heads = self.heads()?;
        let tl = self.transformer_layers_per_block.per_block(n, "transformer_layers_per_block")?;
        Ok(BlockPlan { cross_attention: true, transformer_layers: vec![tl[n - 1]], heads: heads[n - 1], layers: 1 })
    }

    /// Up blocks run in reverse channel order with one more resnet than the down blocks.
    pub fn up_plans(&self) -> Result<Vec<BlockPlan>> {
        let n = self.block_out_channels.len();
        let mut heads = self.heads()?;
        heads.reverse();
        let mut layers = self.layers_per_block.per_block(n, "layers_per_block")?;
        layers.reverse();
        let tl: Vec<Vec<usize>> = match &self.reverse_transformer_layers_per_block {
            Some(r) => {
                ensure!(r.len() == n, "reverse_transformer_layers_per_block needs one entry per block");
                r.clone()
            }
            None => {
                let mut t = self.transformer_layers_per_block.per_block(n, "transformer_layers_per_block")?;
                t.reverse();
                t.iter().zip(&layers).map(|(t, l)| vec![*t; l + 1]).collect()
            }
        };
        (0..n)
            .map(|i| {
                ensure!(
                    tl[i].len() == layers[i] + 1,
                    "up block {i}: expected {} transformer layer counts",
                    layers[i] + 1
                );
                Ok(BlockPlan {
                    cross_attention: self.up_block_types[i] == "CrossAttnUpBlock2D",
                    transformer_layers: tl[i].clone(),
                    heads: heads[i],
                    layers: layers[i] + 1,
                })
            })
            .collect()
    }
}
