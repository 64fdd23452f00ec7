//! The MMDiT block (`JointTransformerBlock`): image and text tokens each get their own
//! AdaLN-Zero modulation, projections and feed-forward, and meet in one joint attention.
//! SD3.5 adds RMS q/k norms and, in MMDiT-X blocks, a second image-only attention.

use burn::module::Module;
use burn::tensor::Tensor;

use crate::models::attention::multi_head_attention;
use crate::models::nn::{Linear, RmsNorm, gelu_tanh, layer_norm_plain, silu};
use crate::models::rope::Rope;
use crate::models::weights::Weights;

/// Every norm of the block: LayerNorm without affine, ε 1e-6.
const EPS: f64 = 1e-6;

/// `x·(1 + scale) + shift` with [B, D] modulation broadcast over tokens.
pub fn modulate(x: Tensor<3>, shift: &Tensor<2>, scale: &Tensor<2>) -> Tensor<3> {
    x * scale.clone().add_scalar(1.0).unsqueeze_dim::<3>(1) + shift.clone().unsqueeze_dim::<3>(1)
}

pub fn gate(x: Tensor<3>, g: &Tensor<2>) -> Tensor<3> {
    x * g.clone().unsqueeze_dim::<3>(1)
}

/// The `linear(silu(temb))` chunks of an AdaLN layer, in diffusers' order.
pub fn ada_chunks(linear: &Linear, temb: &Tensor<2>, n: usize) -> Vec<Tensor<2>> {
    linear.forward(silu(temb.clone())).chunk(n, 1)
}

/// `AdaLayerNormContinuous` (the last block's text norm and `norm_out`): scale then shift.
#[derive(Module, Debug)]
pub struct AdaNormContinuous {
    pub linear: Linear,
}

impl AdaNormContinuous {
    pub fn load(w: &Weights, dim: usize) -> Self {
        Self { linear: Linear::load(&w.pp("linear"), dim, 2 * dim, true) }
    }

    pub fn forward(&self, x: Tensor<3>, temb: &Tensor<2>) -> Tensor<3> {
        let c = ada_chunks(&self.linear, &temb.clone().cast(x.dtype()), 2);
        modulate(layer_norm_plain(x, EPS), &c[1], &c[0])
    }
}

/// An `AdaLayerNormZero` (6 chunks) or `SD35AdaLayerNormZeroX` (9) layer's projection.
#[derive(Module, Debug)]
pub struct AdaNormZero {
    pub linear: Linear,
}

/// `FeedForward(dim, activation_fn="gelu-approximate")`: `net.0.proj`, tanh GELU, `net.2`.
#[derive(Module, Debug)]
pub struct GeluProj {
    pub proj: Linear,
}

#[derive(Module, Debug)]
pub struct FeedForward {
    pub net_0: GeluProj,
    pub net_2: Linear,
}

impl FeedForward {
    pub fn load(w: &Weights, dim: usize) -> Self {
        Self {
            net_0: GeluProj { proj: Linear::load(&w.pp("net.0.proj"), dim, 4 * dim, true) },
            net_2: Linear::load(&w.pp("net.2"), 4 * dim, dim, true),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.net_2.forward(gelu_tanh(self.net_0.proj.forward(x)))
    }
}

/// The RMS norm of each head of [B, L, heads·d] projections (none: unchanged).
pub fn per_head(x: Tensor<3>, norm: &Option<RmsNorm>, heads: usize) -> Tensor<3> {
    let Some(norm) = norm else { return x };
    let [b, l, inner] = x.dims();
    norm.forward(x.reshape([b, l, heads, inner / heads])).reshape([b, l, inner])
}

/// Rotary positions on queries or keys, when the model has them (FLUX; SD3 adds its
/// positions to the patches instead).
fn rotate(x: Tensor<3>, rope: Option<&Rope>, heads: usize) -> Tensor<3> {
    match rope {
        Some(r) => r.apply(x, heads),
        None => x,
    }
}

/// diffusers' `Attention` with `JointAttnProcessor2_0`: image projections `to_*`, text
/// projections `add_*_proj` (joint attention only), per-head RMS norms when `qk_norm`.
#[derive(Module, Debug)]
pub struct JointAttention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub norm_q: Option<RmsNorm>,
    pub norm_k: Option<RmsNorm>,
    pub add_q_proj: Option<Linear>,
    pub add_k_proj: Option<Linear>,
    pub add_v_proj: Option<Linear>,
    pub norm_added_q: Option<RmsNorm>,
    pub norm_added_k: Option<RmsNorm>,
    pub to_out_0: Linear,
    /// The text output projection; the last block's text stream ends here (none).
    pub to_add_out: Option<Linear>,
    heads: usize,
}

impl JointAttention {
    /// `joint`: with text projections; `text_out`: with `to_add_out`.
    pub fn load(w: &Weights, dim: usize, heads: usize, qk_norm: bool, joint: bool, text_out: bool) -> Self {
        let head_dim = dim / heads;
        let lin = |n: &str| Linear::load(&w.pp(n), dim, dim, true);
        let norm = |n: &str, on: bool| on.then(|| RmsNorm::load(&w.pp(n), head_dim, EPS));
        Self {
            to_q: lin("to_q"),
            to_k: lin("to_k"),
            to_v: lin("to_v"),
            norm_q: norm("norm_q", qk_norm),
            norm_k: norm("norm_k", qk_norm),
            add_q_proj: joint.then(|| lin("add_q_proj")),
            add_k_proj: joint.then(|| lin("add_k_proj")),
            add_v_proj: joint.then(|| lin("add_v_proj")),
            norm_added_q: norm("norm_added_q", qk_norm && joint),
            norm_added_k: norm("norm_added_k", qk_norm && joint),
            to_out_0: lin("to_out.0"),
            to_add_out: (joint && text_out).then(|| lin("to_add_out")),
            heads,
        }
    }

    fn per_head(&self, x: Tensor<3>, norm: &Option<RmsNorm>) -> Tensor<3> {
        per_head(x, norm, self.heads)
    }

    /// Image-only attention (MMDiT-X's `attn2`).
    pub fn forward_self(&self, x: Tensor<3>) -> Tensor<3> {
        let q = self.per_head(self.to_q.forward(x.clone()), &self.norm_q);
        let k = self.per_head(self.to_k.forward(x.clone()), &self.norm_k);
        let v = self.to_v.forward(x);
        self.to_out_0.forward(multi_head_attention(q, k, v, self.heads))
    }

    /// Joint attention over `[image; text]` tokens: the image output, and the text output
    /// (projected unless this is the last block). `rope`: rotary positions of the
    /// `[image; text]` sequence, applied after the q/k norms (FLUX).
    pub fn forward_joint(&self, x: Tensor<3>, context: Tensor<3>, rope: Option<&Rope>) -> (Tensor<3>, Tensor<3>) {
        let n = x.dims()[1];
        let lc = context.dims()[1];
        let (add_q, add_k, add_v) = (
            self.add_q_proj.as_ref().expect("joint attention"),
            self.add_k_proj.as_ref().expect("joint attention"),
            self.add_v_proj.as_ref().expect("joint attention"),
        );
        let q = Tensor::cat(
            vec![
                self.per_head(self.to_q.forward(x.clone()), &self.norm_q),
                self.per_head(add_q.forward(context.clone()), &self.norm_added_q),
            ],
            1,
        );
        let k = Tensor::cat(
            vec![
                self.per_head(self.to_k.forward(x.clone()), &self.norm_k),
                self.per_head(add_k.forward(context.clone()), &self.norm_added_k),
            ],
            1,
        );
        let v = Tensor::cat(vec![self.to_v.forward(x), add_v.forward(context)], 1);
        let (q, k) = (rotate(q, rope, self.heads), rotate(k, rope, self.heads));
        let out = multi_head_attention(q, k, v, self.heads);
        let image = out.clone().narrow(1, 0, n);
        let text = out.narrow(1, n, lc);
        let text = match &self.to_add_out {
            Some(p) => p.forward(text),
            None => text,
        };
        (self.to_out_0.forward(image), text)
    }
}

/// One MMDiT block. `norm1_context` is AdaLN-Zero (6 chunks) or, in the last block
/// (`context_pre_only`), AdaLN-Continuous; the text stream then stops after attention.
#[derive(Module, Debug)]
pub struct JointTransformerBlock {
    pub norm1: AdaNormZero,
    pub norm1_context: AdaNormZero,
    pub attn: JointAttention,
    /// MMDiT-X's second attention (SD3.5 `dual_attention_layers`).
    pub attn2: Option<JointAttention>,
    pub ff: FeedForward,
    pub ff_context: Option<FeedForward>,
    context_pre_only: bool,
}

impl JointTransformerBlock {
    pub fn load(w: &Weights, dim: usize, heads: usize, qk_norm: bool, context_pre_only: bool, dual: bool) -> Self {
        let ada = |n: &str, chunks: usize| AdaNormZero {
            linear: Linear::load(&w.pp(n).pp("linear"), dim, chunks * dim, true),
        };
        Self {
            norm1: ada("norm1", if dual { 9 } else { 6 }),
            norm1_context: ada("norm1_context", if context_pre_only { 2 } else { 6 }),
            attn: JointAttention::load(&w.pp("attn"), dim, heads, qk_norm, true, !context_pre_only),
            attn2: dual.then(|| JointAttention::load(&w.pp("attn2"), dim, heads, qk_norm, false, false)),
            ff: FeedForward::load(&w.pp("ff"), dim),
            ff_context: (!context_pre_only).then(|| FeedForward::load(&w.pp("ff_context"), dim)),
            context_pre_only,
        }
    }

    /// `(context, x)` after the block; the context is `None` after the last block.
    pub fn forward(&self, x: Tensor<3>, context: Tensor<3>, temb: &Tensor<2>) -> (Option<Tensor<3>>, Tensor<3>) {
        self.forward_rope(x, context, temb, None)
    }

    /// [`Self::forward`] with rotary positions in the joint attention (FLUX's double-stream
    /// block is this block with RoPE and without MMDiT-X or a context-pre-only end).
    pub fn forward_rope(
        &self,
        x: Tensor<3>,
        context: Tensor<3>,
        temb: &Tensor<2>,
        rope: Option<&Rope>,
    ) -> (Option<Tensor<3>>, Tensor<3>) {
        let dual = self.attn2.is_some();
        // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp[, shift_msa2, scale_msa2, gate_msa2]
        let m = ada_chunks(&self.norm1.linear, temb, if dual { 9 } else { 6 });
        let normed = layer_norm_plain(x.clone(), EPS);
        let x_in = modulate(normed.clone(), &m[0], &m[1]);

        let (c_in, c_mod) = if self.context_pre_only {
            let c = ada_chunks(&self.norm1_context.linear, &temb.clone().cast(context.dtype()), 2);
            (modulate(layer_norm_plain(context.clone(), EPS), &c[1], &c[0]), None)
        } else {
            let c = ada_chunks(&self.norm1_context.linear, temb, 6);
            (modulate(layer_norm_plain(context.clone(), EPS), &c[0], &c[1]), Some(c))
        };

        let (attn_out, context_attn_out) = self.attn.forward_joint(x_in, c_in, rope);
        let mut x = x + gate(attn_out, &m[2]);
        if let Some(attn2) = &self.attn2 {
            let x2 = modulate(normed, &m[6], &m[7]);
            x = x + gate(attn2.forward_self(x2), &m[8]);
        }
        let ff_in = modulate(layer_norm_plain(x.clone(), EPS), &m[3], &m[4]);
        let x = x.clone() + gate(self.ff.forward(ff_in), &m[5]);

        let (Some(c), Some(ff_context)) = (c_mod, &self.ff_context) else { return (None, x) };
        let context = context + gate(context_attn_out, &c[2]);
        let ff_in = modulate(layer_norm_plain(context.clone(), EPS), &c[3], &c[4]);
        let context = context.clone() + gate(ff_context.forward(ff_in), &c[5]);
        (Some(context), x)
    }
}
