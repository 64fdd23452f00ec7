//! The CLIP text transformers of SDXL (`text_encoder`: CLIP ViT-L, `text_encoder_2`:
//! OpenCLIP bigG with a projection), built from a transformers `config.json`; the vision
//! tower (`vision`) and the whole CLIP model that reward models are made of (`model`).

pub mod builtin_vocab;
pub mod clean;
pub mod config;
pub mod model;
pub mod open_clip;
pub mod tokenizer;
pub mod vision;

use std::path::Path;

use anyhow::Result;
use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, sigmoid};
use burn::tensor::{DType, Device, Int, Tensor};

pub use self::config::ClipTextConfig;
use super::attention::attention_with;
use super::nn::{LayerNorm, Linear};
use super::weights::{Init, Weights};

#[derive(Module, Debug)]
pub struct Embedding {
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    pub fn load(w: &Weights, n: usize, d: usize) -> Self {
        Self { weight: w.param("weight", [n, d], Init::FanIn(d)) }
    }
}

#[derive(Module, Debug)]
pub struct ClipEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

#[derive(Module, Debug)]
pub struct ClipAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    heads: usize,
}

#[derive(Module, Debug)]
pub struct ClipMlp {
    pub fc1: Linear,
    pub fc2: Linear,
    quick_gelu: bool,
}

#[derive(Module, Debug)]
pub struct ClipLayer {
    pub layer_norm1: LayerNorm,
    pub self_attn: ClipAttention,
    pub layer_norm2: LayerNorm,
    pub mlp: ClipMlp,
}

#[derive(Module, Debug)]
pub struct ClipEncoder {
    pub layers: Vec<ClipLayer>,
}

#[derive(Module, Debug)]
pub struct ClipTextModel {
    pub embeddings: ClipEmbeddings,
    pub encoder: ClipEncoder,
    pub final_layer_norm: LayerNorm,
    /// `text_projection` (bias-free) of `CLIPTextModelWithProjection`.
    pub text_projection: Option<Linear>,
    eos_token_id: i64,
}

/// What SDXL takes from a text encoder.
pub struct ClipOutput {
    /// The penultimate layer's hidden states (no final layer norm): [B, L, D].
    pub penultimate: Tensor<3>,
    pub last_hidden_state: Tensor<3>,
    /// The final-layer-normed state of the first EOS token: [B, D].
    pub pooled: Tensor<2>,
    /// `text_projection(pooled)` when the model has the projection: [B, P].
    pub text_embeds: Option<Tensor<2>>,
}

/// The sizes of an encoder layer, shared by the text and the vision tower.
#[derive(Debug, Clone, Copy)]
pub struct LayerShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub quick_gelu: bool,
    pub eps: f64,
}

impl From<&ClipTextConfig> for LayerShape {
    fn from(c: &ClipTextConfig) -> Self {
        Self {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            quick_gelu: c.hidden_act == "quick_gelu",
            eps: c.layer_norm_eps,
        }
    }
}

impl ClipLayer {
    pub fn load(w: &Weights, c: LayerShape) -> Self {
        let (d, i) = (c.hidden, c.intermediate);
        let a = w.pp("self_attn");
        let m = w.pp("mlp");
        Self {
            layer_norm1: LayerNorm::load(&w.pp("layer_norm1"), d, c.eps),
            self_attn: ClipAttention {
                q_proj: Linear::load(&a.pp("q_proj"), d, d, true),
                k_proj: Linear::load(&a.pp("k_proj"), d, d, true),
                v_proj: Linear::load(&a.pp("v_proj"), d, d, true),
                out_proj: Linear::load(&a.pp("out_proj"), d, d, true),
                heads: c.heads,
            },
            layer_norm2: LayerNorm::load(&w.pp("layer_norm2"), d, c.eps),
            mlp: ClipMlp {
                fc1: Linear::load(&m.pp("fc1"), d, i, true),
                fc2: Linear::load(&m.pp("fc2"), i, d, true),
                quick_gelu: c.quick_gelu,
            },
        }
    }

    /// `causal`: the text tower's mask; the vision tower attends everywhere.
    pub fn forward(&self, x: Tensor<3>, causal: bool) -> Tensor<3> {
        let h = self.layer_norm1.forward(x.clone());
        let a = &self.self_attn;
        let attn = attention_with(
            a.q_proj.forward(h.clone()),
            a.k_proj.forward(h.clone()),
            a.v_proj.forward(h),
            a.heads,
            causal,
        );
        let x = x + a.out_proj.forward(attn);
        let h = self.mlp.fc1.forward(self.layer_norm2.forward(x.clone()));
        // quick_gelu(x) = x·σ(1.702·x)
        let h = if self.mlp.quick_gelu { h.clone() * sigmoid(h.mul_scalar(1.702)) } else { gelu(h) };
        x + self.mlp.fc2.forward(h)
    }
}

impl ClipTextModel {
    /// `with_projection`: build `text_projection` (text_encoder_2).
    pub fn load(c: &ClipTextConfig, w: &Weights, with_projection: bool) -> Result<Self> {
        c.validate()?;
        // transformers 5 may write the keys without the `text_model.` prefix: accept both.
        let tm =
            if w.contains("text_model.embeddings.token_embedding.weight") { w.pp("text_model") } else { w.clone() };
        tm.skip("embeddings.position_ids");
        let e = tm.pp("embeddings");
        let layers = tm.pp("encoder").pp("layers");
        let projection = c.projection_dim.unwrap_or(c.hidden_size);
        Ok(Self {
            embeddings: ClipEmbeddings {
                token_embedding: Embedding::load(&e.pp("token_embedding"), c.vocab_size, c.hidden_size),
                position_embedding: Embedding::load(
                    &e.pp("position_embedding"),
                    c.max_position_embeddings,
                    c.hidden_size,
                ),
            },
            encoder: ClipEncoder {
                layers: (0..c.num_hidden_layers).map(|i| ClipLayer::load(&layers.pp(i), c.into())).collect(),
            },
            final_layer_norm: LayerNorm::load(&tm.pp("final_layer_norm"), c.hidden_size, c.layer_norm_eps),
            text_projection: with_projection
                .then(|| Linear::load(&w.pp("text_projection"), c.hidden_size, projection, false)),
            eos_token_id: c.eos_token_id,
        })
    }

    /// Loads a transformers text-encoder folder (`config.json` + `model.safetensors`).
    pub fn from_dir(
        dir: &Path,
        device: &Device,
        dtype: DType,
        with_projection: bool,
    ) -> Result<(Self, ClipTextConfig)> {
        Weights::load_dir(dir, &["model"], device, dtype, |c, w| Self::load(c, w, with_projection))
    }

    /// `ids`: [B, L] token ids (L ≤ max_position_embeddings).
    pub fn forward(&self, ids: Tensor<2, Int>) -> ClipOutput {
        let [b, l] = ids.dims();
        let device = ids.device();
        let tokens = burn::tensor::module::embedding(self.embeddings.token_embedding.weight.val(), ids.clone());
        let positions = Tensor::<1, Int>::arange(0..l as i64, &device).reshape([1, l]);
        let pos = burn::tensor::module::embedding(self.embeddings.position_embedding.weight.val(), positions);
        let mut x = tokens + pos;
        let n = self.encoder.layers.len();
        let mut penultimate = None;
        for (i, layer) in self.encoder.layers.iter().enumerate() {
            x = layer.forward(x, true);
            if i + 2 == n {
                penultimate = Some(x.clone());
            }
        }
        let last = self.final_layer_norm.forward(x);
        // transformers: argmax(ids) for the legacy eos_token_id 2, else the first EOS.
        let eos_at =
            if self.eos_token_id == 2 { ids.argmax(1) } else { ids.equal_elem(self.eos_token_id).int().argmax(1) };
        let d = last.dims()[2];
        let index = eos_at.reshape([b, 1, 1]).expand([b, 1, d]);
        let pooled: Tensor<2> = last.clone().gather(1, index).reshape([b, d]);
        let text_embeds = self.text_projection.as_ref().map(|p| p.forward(pooled.clone()));
        ClipOutput {
            penultimate: penultimate.expect("at least two layers"),
            last_hidden_state: last,
            pooled,
            text_embeds,
        }
    }
}
