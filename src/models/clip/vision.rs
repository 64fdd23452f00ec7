//! The CLIP vision tower (transformers' `CLIPVisionTransformer`): patch embedding (a
//! bias-free convolution with stride = patch), a class token, learned positions, a layer
//! norm before the encoder (`pre_layrnorm`, transformers' spelling), the encoder without a
//! causal mask, and the class token's state after `post_layernorm` as the pooled output.

use anyhow::{Result, ensure};
use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use serde::Deserialize;

use super::{ClipEncoder, ClipLayer, Embedding, LayerShape};
use crate::models::nn::{LayerNorm, like};
use crate::models::weights::{Init, Weights};

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "three")]
    pub num_channels: usize,
    /// quick_gelu (OpenAI CLIP) or gelu (LAION's ViT-H, PickScore).
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

fn three() -> usize {
    3
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}

impl ClipVisionConfig {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu"),
            "vision config: hidden_act {:?} is not supported (quick_gelu or gelu)",
            self.hidden_act
        );
        ensure!(
            self.hidden_size.is_multiple_of(self.num_attention_heads),
            "vision config: hidden_size {} is not a multiple of num_attention_heads {}",
            self.hidden_size,
            self.num_attention_heads
        );
        ensure!(
            self.patch_size > 0 && self.image_size.is_multiple_of(self.patch_size),
            "vision config: image_size {} is not a multiple of patch_size {}",
            self.image_size,
            self.patch_size
        );
        Ok(())
    }

    pub fn positions(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }
}

#[derive(Module, Debug)]
pub struct ClipVisionEmbeddings {
    pub patch_embedding: Param<Tensor<4>>,
    pub class_embedding: Param<Tensor<1>>,
    pub position_embedding: Embedding,
    patch: usize,
}

#[derive(Module, Debug)]
pub struct ClipVisionModel {
    pub embeddings: ClipVisionEmbeddings,
    pub pre_layrnorm: LayerNorm,
    pub encoder: ClipEncoder,
    pub post_layernorm: LayerNorm,
    image_size: usize,
}

impl ClipVisionModel {
    /// `w` at the tower's prefix (`vision_model`).
    pub fn load(c: &ClipVisionConfig, w: &Weights) -> Result<Self> {
        c.validate()?;
        let d = c.hidden_size;
        let e = w.pp("embeddings");
        e.skip("position_ids");
        let shape = LayerShape {
            hidden: d,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            quick_gelu: c.hidden_act == "quick_gelu",
            eps: c.layer_norm_eps,
        };
        let layers = w.pp("encoder").pp("layers");
        let fan_in = c.num_channels * c.patch_size * c.patch_size;
        Ok(Self {
            embeddings: ClipVisionEmbeddings {
                patch_embedding: e.param(
                    "patch_embedding.weight",
                    [d, c.num_channels, c.patch_size, c.patch_size],
                    Init::FanIn(fan_in),
                ),
                class_embedding: e.param("class_embedding", [d], Init::FanIn(d)),
                position_embedding: Embedding::load(&e.pp("position_embedding"), c.positions(), d),
                patch: c.patch_size,
            },
            pre_layrnorm: LayerNorm::load(&w.pp("pre_layrnorm"), d, c.layer_norm_eps),
            encoder: ClipEncoder {
                layers: (0..c.num_hidden_layers).map(|i| ClipLayer::load(&layers.pp(i), shape)).collect(),
            },
            post_layernorm: LayerNorm::load(&w.pp("post_layernorm"), d, c.layer_norm_eps),
            image_size: c.image_size,
        })
    }

    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// `pixels` [B, 3, S, S] (normalised) → the pooled output [B, D].
    pub fn forward(&self, pixels: Tensor<4>) -> Tensor<2> {
        let [b, _, h, w] = pixels.dims();
        let e = &self.embeddings;
        let dtype = pixels.dtype();
        let options = ConvOptions::new([e.patch; 2], [0, 0], [1, 1], 1);
        let patches = conv2d(pixels, like(&e.patch_embedding, dtype), None, options);
        let d = patches.dims()[1];
        let n = (h / e.patch) * (w / e.patch);
        let patches = patches.reshape([b, d, n]).swap_dims(1, 2);
        let class = like(&e.class_embedding, dtype).reshape([1, 1, d]).expand([b, 1, d]);
        let positions = like(&e.position_embedding.weight, dtype).reshape([1, n + 1, d]);
        let mut x = self.pre_layrnorm.forward(Tensor::cat(vec![class, patches], 1) + positions);
        for layer in &self.encoder.layers {
            x = layer.forward(x, false);
        }
        let first: Tensor<2> = x.narrow(1, 0, 1).reshape([b, d]);
        self.post_layernorm.forward(first)
    }
}
