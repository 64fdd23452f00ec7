//! Multi-head attention: one function used by every attention layer of every model.
//!
//! Under autodiff (training) it is the memory-efficient op of [`op`], whose forward keeps
//! only Q, K, V, the output and the log-sum-exp; elsewhere (inference, the frozen reference)
//! Burn's own attention, which backends may fuse. [`set_training_attention`] selects the
//! naive path (Burn's materialised softmax under autodiff) for comparison.

pub mod blocked;
pub mod op;

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use burn::backend::Dispatch;
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::module::attention;

use self::op::EfficientAttention;
use super::nn::Linear;
use super::weights::Weights;

/// How attention runs when gradients are tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainingAttention {
    /// Blocked attention with its own backward (the default).
    Efficient,
    /// Burn's attention under autodiff: the full softmax of every layer is kept.
    Naive,
}

impl std::str::FromStr for TrainingAttention {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "efficient" => Ok(Self::Efficient),
            "naive" => Ok(Self::Naive),
            other => anyhow::bail!("unknown attention {other:?}: expected efficient or naive"),
        }
    }
}

static MODE: AtomicU8 = AtomicU8::new(0);

/// Score elements (batch × heads × query rows × keys) one block may hold: 2²⁴ f32 values is
/// 64 MB per score-sized temporary, small next to the activations it saves.
pub const DEFAULT_BLOCK_ELEMENTS: usize = 1 << 24;
static BLOCK_ELEMENTS: AtomicUsize = AtomicUsize::new(DEFAULT_BLOCK_ELEMENTS);

/// Process-wide: the attention path of every model under autodiff.
pub fn set_training_attention(mode: TrainingAttention) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

pub fn training_attention() -> TrainingAttention {
    if MODE.load(Ordering::Relaxed) == TrainingAttention::Naive as u8 {
        TrainingAttention::Naive
    } else {
        TrainingAttention::Efficient
    }
}

/// Process-wide: the score elements one block of the efficient path may hold (≥ 1).
pub fn set_block_elements(elements: usize) {
    BLOCK_ELEMENTS.store(elements.max(1), Ordering::Relaxed);
}

/// Query rows per block for a [b, heads, lq, lk] score matrix under the current budget.
pub fn block_rows(b: usize, heads: usize, lq: usize, lk: usize) -> usize {
    let per_row = (b * heads * lk).max(1);
    (BLOCK_ELEMENTS.load(Ordering::Relaxed) / per_row).clamp(1, lq.max(1))
}

thread_local! {
    /// Set while a block-checkpointed forward pass runs without a graph (this thread only:
    /// data-parallel ranks are threads, and the frozen reference keeps Burn's attention).
    static AS_TRAINED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with attention on untracked tensors computed exactly as the training op computes
/// it under autodiff (the blocked forward): a checkpointed forward pass must give the values
/// its backward pass recomputes, not the (possibly fused) inference attention's.
pub fn as_trained<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            AS_TRAINED.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(AS_TRAINED.with(|c| c.replace(true)));
    f()
}

/// The efficient op on [B, H, L, d] tensors with `rows` query rows per block (tests and
/// benchmarks call it directly; models go through [`attention_with`]).
pub fn efficient(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool, rows: usize) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as EfficientAttention>::efficient_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        causal,
        rows,
    ))
}

/// The training op's forward on untracked tensors (see [`as_trained`]).
fn blocked_untracked(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool, rows: usize) -> Tensor<4> {
    let d = q.dims()[3];
    let plan = blocked::BlockPlan { rows, causal, scale: 1.0 / (d as f64).sqrt() };
    let (out, _) = blocked::forward::<Dispatch>(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), &plan);
    Tensor::from_dispatch(out)
}

/// Burn's attention on [B, H, L, d] tensors (under autodiff: the materialised softmax).
pub fn naive(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    attention(q, k, v, None, None, op::options(causal))
}

/// Scaled dot-product attention on `[B, L, heads*d]` inputs.
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
    let (q, k, v) = (split(q, lq), split(k, lk), split(v, lk));
    let efficient_mode = training_attention() == TrainingAttention::Efficient && lq * lk > 0;
    let rows = block_rows(b, heads, lq, lk);
    let out = if efficient_mode && q.is_autodiff() {
        efficient(q, k, v, causal, rows)
    } else if efficient_mode && AS_TRAINED.with(|c| c.get()) {
        blocked_untracked(q, k, v, causal, rows)
    } else {
        naive(q, k, v, causal)
    };
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
