//! Multi-head attention: one function used by every attention layer of every model.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use super::nn::Linear;
use super::weights::Weights;

/// Scaled dot-product attention on `[B, L, heads*d]` inputs.
///
/// Goes through Burn's attention op, which backends may fuse (flash attention on CUDA).
/// Under autodiff Burn 0.22 lowers it to a materialised softmax(QKᵀ), whose memory the
/// benchmarks report.
pub fn multi_head_attention(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    attention_with(q, k, v, heads, false)
}

/// [`multi_head_attention`], with each query attending only to keys at or before it when
/// `causal` (CLIP's text transformer).
pub fn attention_with(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    let [b, lq, inner] = q.dims();
    let lk = k.dims()[1];
    let d = inner / heads;
    let split = |t: Tensor<3>, l: usize| t.reshape([b, l, heads, d]).swap_dims(1, 2);
    let options = AttentionModuleOptions { is_causal: causal, ..Default::default() };
    let out = attention(split(q, lq), split(k, lk), split(v, lk), None, None, options);
    out.swap_dims(1, 2).reshape([b, lq, inner])
}

/// diffusers' `Attention` as SDXL's transformer blocks use it: bias-free q/k/v, biased output.
#[derive(Module, Debug)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    /// diffusers' `to_out.0` (the `ModuleList`'s second entry is a dropout).
    pub to_out_0: Linear,
    heads: usize,
}

impl Attention {
    pub fn load(
        w: &Weights,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
        qkv_bias: bool,
    ) -> Self {
        let inner = heads * head_dim;
        Self {
            to_q: Linear::load(&w.pp("to_q"), query_dim, inner, qkv_bias),
            to_k: Linear::load(&w.pp("to_k"), context_dim, inner, qkv_bias),
            to_v: Linear::load(&w.pp("to_v"), context_dim, inner, qkv_bias),
            to_out_0: Linear::load(&w.pp("to_out.0"), inner, query_dim, true),
            heads,
        }
    }

    /// Self-attention when `context` is `None`.
    pub fn forward(&self, x: Tensor<3>, context: Option<Tensor<3>>) -> Tensor<3> {
        let context = context.unwrap_or_else(|| x.clone());
        let q = self.to_q.forward(x);
        let k = self.to_k.forward(context.clone());
        let v = self.to_v.forward(context);
        self.to_out_0.forward(multi_head_attention(q, k, v, self.heads))
    }
}
