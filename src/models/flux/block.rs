//! FLUX's single-stream block (`FluxSingleTransformerBlock`): text and image tokens as one
//! sequence, one AdaLN-Zero modulation, and attention and an MLP run in parallel on the
//! same normed input, their outputs concatenated into one projection. (The double-stream
//! block is SD3's joint block with rotary positions: `sd3::JointTransformerBlock`.)

use burn::module::Module;
use burn::tensor::Tensor;

use crate::models::attention::multi_head_attention;
use crate::models::nn::{Linear, RmsNorm, gelu_tanh, layer_norm_plain};
use crate::models::rope::Rope;
use crate::models::sd3::block::{ada_chunks, gate, modulate, per_head};
use crate::models::weights::Weights;

/// The block's norms: LayerNorm without affine and the q/k RMS norms, ε 1e-6.
const EPS: f64 = 1e-6;

/// `AdaLayerNormZeroSingle`'s projection: shift, scale, gate.
#[derive(Module, Debug)]
pub struct AdaNormZeroSingle {
    pub linear: Linear,
}

/// `FluxAttention` with `pre_only`: q/k/v projections and per-head RMS norms, no output
/// projection (the block's `proj_out` does it, fused with the MLP's).
#[derive(Module, Debug)]
pub struct SingleAttention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub norm_q: Option<RmsNorm>,
    pub norm_k: Option<RmsNorm>,
    heads: usize,
}

impl SingleAttention {
    fn load(w: &Weights, dim: usize, heads: usize) -> Self {
        let lin = |n: &str| Linear::load(&w.pp(n), dim, dim, true);
        let norm = |n: &str| Some(RmsNorm::load(&w.pp(n), dim / heads, EPS));
        Self {
            to_q: lin("to_q"),
            to_k: lin("to_k"),
            to_v: lin("to_v"),
            norm_q: norm("norm_q"),
            norm_k: norm("norm_k"),
            heads,
        }
    }

    fn forward(&self, x: Tensor<3>, rope: &Rope) -> Tensor<3> {
        let q = rope.apply(per_head(self.to_q.forward(x.clone()), &self.norm_q, self.heads), self.heads);
        let k = rope.apply(per_head(self.to_k.forward(x.clone()), &self.norm_k, self.heads), self.heads);
        multi_head_attention(q, k, self.to_v.forward(x), self.heads)
    }
}

#[derive(Module, Debug)]
pub struct SingleTransformerBlock {
    pub norm: AdaNormZeroSingle,
    pub proj_mlp: Linear,
    pub attn: SingleAttention,
    pub proj_out: Linear,
}

impl SingleTransformerBlock {
    /// `mlp_ratio` 4 as in diffusers.
    pub fn load(w: &Weights, dim: usize, heads: usize) -> Self {
        let mlp = 4 * dim;
        Self {
            norm: AdaNormZeroSingle { linear: Linear::load(&w.pp("norm").pp("linear"), dim, 3 * dim, true) },
            proj_mlp: Linear::load(&w.pp("proj_mlp"), dim, mlp, true),
            attn: SingleAttention::load(&w.pp("attn"), dim, heads),
            proj_out: Linear::load(&w.pp("proj_out"), dim + mlp, dim, true),
        }
    }

    /// The joint sequence [B, S, D] (image tokens then text, `rope` in that order) after the block.
    pub fn forward(&self, x: Tensor<3>, temb: &Tensor<2>, rope: &Rope) -> Tensor<3> {
        let m = ada_chunks(&self.norm.linear, temb, 3);
        let normed = modulate(layer_norm_plain(x.clone(), EPS), &m[0], &m[1]);
        let mlp = gelu_tanh(self.proj_mlp.forward(normed.clone()));
        let attn = self.attn.forward(normed, rope);
        let out = self.proj_out.forward(Tensor::cat(vec![attn, mlp], 2));
        x + gate(out, &m[2])
    }
}
