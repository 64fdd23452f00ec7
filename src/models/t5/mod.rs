//! The T5 v1.1 encoder (`T5EncoderModel`), SD3's and FLUX's third text encoder, in
//! transformers' tensor names: token embeddings, blocks of RMS-normed self-attention with a
//! relative position bias (bucketed, computed once by block 0's table and shared by every
//! block, no 1/√d scaling) and a gated-GELU feed-forward, then a final RMS norm. Norms and
//! softmax run in f32: T5 overflows in f16.

pub mod config;
pub mod tokenizer;

use std::path::Path;

use anyhow::Result;
use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Int, Tensor, TensorData, activation};

pub use self::config::T5Config;
use super::nn::{Linear, RmsNorm, gelu_tanh, like};
use super::weights::{Init, Weights};

/// T5's layer norm: x / √(mean(x²) + ε) · w (no mean, no bias), in f32.
pub type T5LayerNorm = RmsNorm;

#[derive(Module, Debug)]
pub struct T5Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    heads: usize,
    d_kv: usize,
}

#[derive(Module, Debug)]
pub struct T5Block {
    pub attention_norm: T5LayerNorm,
    pub attention: T5Attention,
    pub ff_norm: T5LayerNorm,
    pub wi_0: Linear,
    pub wi_1: Linear,
    pub wo: Linear,
}

#[derive(Module, Debug)]
pub struct T5EncoderModel {
    pub embed_tokens: Param<Tensor<2>>,
    /// [buckets, heads]: block 0's table, used by every block.
    pub relative_attention_bias: Param<Tensor<2>>,
    pub blocks: Vec<T5Block>,
    pub final_layer_norm: T5LayerNorm,
    buckets: usize,
    max_distance: usize,
}

/// transformers' `_relative_position_bucket` for the encoder (bidirectional): half the
/// buckets per direction, exact up to a quarter of them, then logarithmic up to
/// `max_distance`. The logarithm is taken in f32, as torch does.
pub fn relative_position_bucket(relative: i64, buckets: usize, max_distance: usize) -> usize {
    let half = (buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let ratio = ((n as f32) / max_exact as f32).ln() / ((max_distance as f64 / max_exact as f64).ln() as f32);
        let large = max_exact + (ratio * (half - max_exact) as f32) as i64;
        bucket += large.min(half - 1);
    }
    bucket as usize
}

impl T5EncoderModel {
    pub fn load(c: &T5Config, w: &Weights) -> Result<Self> {
        c.validate()?;
        let d = c.d_model;
        let inner = c.num_heads * c.d_kv;
        // Tied checkpoints save the embedding once, as `shared.weight`.
        let embed = if w.contains("encoder.embed_tokens.weight") { "encoder.embed_tokens" } else { "shared" };
        w.skip("encoder.embed_tokens.weight");
        let blocks = w.pp("encoder").pp("block");
        let bias = blocks.pp(0).pp("layer").pp(0).pp("SelfAttention").pp("relative_attention_bias");
        Ok(Self {
            embed_tokens: w.pp(embed).param("weight", [c.vocab_size, d], Init::FanIn(d)),
            relative_attention_bias: bias.param(
                "weight",
                [c.relative_attention_num_buckets, c.num_heads],
                Init::FanIn(1),
            ),
            blocks: (0..c.num_layers)
                .map(|i| {
                    let (a, f) = (blocks.pp(i).pp("layer").pp(0), blocks.pp(i).pp("layer").pp(1));
                    let sa = a.pp("SelfAttention");
                    let ff = f.pp("DenseReluDense");
                    T5Block {
                        attention_norm: T5LayerNorm::load(&a.pp("layer_norm"), d, c.layer_norm_epsilon),
                        attention: T5Attention {
                            q: Linear::load(&sa.pp("q"), d, inner, false),
                            k: Linear::load(&sa.pp("k"), d, inner, false),
                            v: Linear::load(&sa.pp("v"), d, inner, false),
                            o: Linear::load(&sa.pp("o"), inner, d, false),
                            heads: c.num_heads,
                            d_kv: c.d_kv,
                        },
                        ff_norm: T5LayerNorm::load(&f.pp("layer_norm"), d, c.layer_norm_epsilon),
                        wi_0: Linear::load(&ff.pp("wi_0"), d, c.d_ff, false),
                        wi_1: Linear::load(&ff.pp("wi_1"), d, c.d_ff, false),
                        wo: Linear::load(&ff.pp("wo"), c.d_ff, d, false),
                    }
                })
                .collect(),
            final_layer_norm: T5LayerNorm::load(&w.pp("encoder").pp("final_layer_norm"), d, c.layer_norm_epsilon),
            buckets: c.relative_attention_num_buckets,
            max_distance: c.relative_attention_max_distance,
        })
    }

    /// Loads a transformers `T5EncoderModel` folder (`config.json` + `model.safetensors`).
    pub fn from_dir(dir: &Path, device: &Device, dtype: DType) -> Result<(Self, T5Config)> {
        Weights::load_dir(dir, &["model"], device, dtype, Self::load)
    }

    /// [1, heads, L, L]: the bias of key position j for query position i.
    fn position_bias(&self, len: usize, device: &Device) -> Tensor<4> {
        let heads = self.relative_attention_bias.dims()[1];
        let ids: Vec<i64> = (0..len)
            .flat_map(|i| (0..len).map(move |j| (i, j)))
            .map(|(i, j)| relative_position_bucket(j as i64 - i as i64, self.buckets, self.max_distance) as i64)
            .collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [len * len]), device);
        let table = like(&self.relative_attention_bias, DType::F32);
        table.select(0, ids).reshape([len, len, heads]).permute([2, 0, 1]).unsqueeze::<4>()
    }

    /// `last_hidden_state` [B, L, d_model] of token ids [B, L] (no attention mask: SD3's
    /// pipeline passes none, padding included).
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, l] = ids.dims();
        let device = ids.device();
        let dtype = self.embed_tokens.val().dtype();
        let embed = self.embed_tokens.val();
        let d = embed.dims()[1];
        let mut x = embed.select(0, ids.reshape([b * l])).reshape([b, l, d]);
        let bias = self.position_bias(l, &device);
        for block in &self.blocks {
            x = x.clone() + block.attention.forward(block.attention_norm.forward(x), bias.clone());
            let h = block.ff_norm.forward(x.clone());
            let gated = gelu_tanh(block.wi_0.forward(h.clone())) * block.wi_1.forward(h);
            x = x + block.wo.forward(gated);
        }
        self.final_layer_norm.forward(x).cast(dtype)
    }
}

impl T5Attention {
    fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let [b, l, _] = x.dims();
        let split = |t: Tensor<3>| t.reshape([b, l, self.heads, self.d_kv]).swap_dims(1, 2);
        let (q, k, v) = (split(self.q.forward(x.clone())), split(self.k.forward(x.clone())), split(self.v.forward(x)));
        let dtype = q.dtype();
        // No 1/√d scaling (T5 folds it into its initialisation); softmax in f32.
        let scores = q.cast(DType::F32).matmul(k.cast(DType::F32).swap_dims(2, 3)) + bias;
        let attn = activation::softmax(scores, 3).cast(dtype);
        let out = attn.matmul(v).swap_dims(1, 2).reshape([b, l, self.heads * self.d_kv]);
        self.o.forward(out)
    }
}
