//! Attention computed in query blocks, FlashAttention-2 style, on any backend's primitive ops.
//!
//! The forward returns the output and the per-row log-sum-exp of the scaled scores; the
//! backward recomputes each block's probabilities from Q, K and that log-sum-exp, so no
//! [Lq, Lk] matrix outlives its block. Softmax statistics are kept in f32 whatever the
//! input precision (as the fused kernels do); the matmuls run in the input precision.
//!
//! Shapes: q [B, H, Lq, d], k and v [B, H, Lk, d], lse [B, H, Lq, 1] (f32).

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Slice, TensorData, TensorMetadata};
use burn::tensor::{DType, FloatDType};

/// What one call needs besides the tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockPlan {
    /// Query rows per block.
    pub rows: usize,
    /// Each query attends only to keys at or before its position (bottom-right aligned when
    /// Lk > Lq, as Burn's and PyTorch's causal masks are).
    pub causal: bool,
    /// Multiplies QKᵀ (1/√d unless the caller says otherwise).
    pub scale: f64,
}

fn dims<B: Backend>(t: &FloatTensor<B>) -> [usize; 4] {
    t.shape().dims::<4>()
}

fn cast<B: Backend>(t: FloatTensor<B>, dtype: DType) -> FloatTensor<B> {
    if t.dtype() == dtype { t } else { B::float_cast(t, FloatDType::from(dtype)) }
}

fn rows<B: Backend>(t: FloatTensor<B>, start: usize, end: usize) -> FloatTensor<B> {
    B::float_slice(t, &[Slice::full(), Slice::full(), Slice::from(start..end), Slice::full()])
}

/// The additive causal mask of the query rows `start..end`: 0 where allowed, -inf where a
/// key lies after the query, expanded to the block's score shape.
fn causal_mask<B: Backend>(shape: [usize; 4], start: usize, lq: usize, device: &B::Device) -> FloatTensor<B> {
    let [b, h, n, lk] = shape;
    let offset = lk as i64 - lq as i64;
    let values: Vec<f32> = (0..n)
        .flat_map(|r| {
            let last = (start + r) as i64 + offset;
            (0..lk).map(move |c| if (c as i64) > last { f32::NEG_INFINITY } else { 0.0 })
        })
        .collect();
    let mask = B::float_from_data(TensorData::new(values, [1, 1, n, lk]), device);
    B::float_expand(mask, [b, h, n, lk].into())
}

/// Scaled scores of one query block, in f32: [B, H, rows, Lk].
fn scores<B: Backend>(
    q_block: FloatTensor<B>,
    k_t: &FloatTensor<B>,
    start: usize,
    lq: usize,
    plan: &BlockPlan,
) -> FloatTensor<B> {
    let s = cast::<B>(B::float_matmul(q_block, k_t.clone()), DType::F32);
    let s = B::float_mul_scalar(s, plan.scale.into());
    if plan.causal {
        let device = s.device();
        let mask = causal_mask::<B>(dims::<B>(&s), start, lq, &device);
        B::float_add(s, mask)
    } else {
        s
    }
}

fn block_starts(lq: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    let rows = rows.max(1);
    (0..lq).step_by(rows).map(move |s| (s, (s + rows).min(lq)))
}

/// Output [B, H, Lq, d] (input precision) and log-sum-exp [B, H, Lq, 1] (f32).
pub fn forward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    plan: &BlockPlan,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let dtype = q.dtype();
    let lq = dims::<B>(&q)[2];
    let k_t = B::float_transpose(k);
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    for (start, end) in block_starts(lq, plan.rows) {
        let s = scores::<B>(rows::<B>(q.clone(), start, end), &k_t, start, lq, plan);
        // Every row keeps at least its diagonal key under the causal mask, so the max is finite.
        let max = B::float_max_dim(s.clone(), 3);
        let e = B::float_exp(B::float_sub(s, max.clone()));
        let sum = B::float_sum_dim(e.clone(), 3);
        let p = cast::<B>(B::float_div(e, sum.clone()), dtype);
        outs.push(B::float_matmul(p, v.clone()));
        lses.push(B::float_add(max, B::float_log(sum)));
    }
    (concat::<B>(outs), concat::<B>(lses))
}

fn concat<B: Backend>(mut parts: Vec<FloatTensor<B>>) -> FloatTensor<B> {
    if parts.len() == 1 { parts.pop().expect("one part") } else { B::float_cat(parts, 2) }
}

/// Gradients of q, k and v given the output gradient `grad` [B, H, Lq, d].
#[allow(clippy::too_many_arguments)]
pub fn backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
    plan: &BlockPlan,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let dtype = q.dtype();
    let lq = dims::<B>(&q)[2];
    let grad = cast::<B>(grad, dtype);
    // D_i = Σ_j P_ij dP_ij = dO_i · O_i, once for all blocks.
    let delta = B::float_sum_dim(B::float_mul(cast::<B>(grad.clone(), DType::F32), cast::<B>(out, DType::F32)), 3);
    let k_t = B::float_transpose(k.clone());
    let v_t = B::float_transpose(v);
    let mut dq = Vec::new();
    let mut dk: Option<FloatTensor<B>> = None;
    let mut dv: Option<FloatTensor<B>> = None;
    let add = |acc: Option<FloatTensor<B>>, x: FloatTensor<B>| {
        Some(match acc {
            Some(a) => B::float_add(a, x),
            None => x,
        })
    };
    for (start, end) in block_starts(lq, plan.rows) {
        let q_block = rows::<B>(q.clone(), start, end);
        let g_block = rows::<B>(grad.clone(), start, end);
        let s = scores::<B>(q_block.clone(), &k_t, start, lq, plan);
        let p = B::float_exp(B::float_sub(s, rows::<B>(lse.clone(), start, end)));
        let p_low = cast::<B>(p.clone(), dtype);
        dv = add(dv, B::float_matmul(B::float_transpose(p_low), g_block.clone()));
        let dp = cast::<B>(B::float_matmul(g_block, v_t.clone()), DType::F32);
        let ds = B::float_mul(p, B::float_sub(dp, rows::<B>(delta.clone(), start, end)));
        let ds = cast::<B>(B::float_mul_scalar(ds, plan.scale.into()), dtype);
        dq.push(B::float_matmul(ds.clone(), k.clone()));
        dk = add(dk, B::float_matmul(B::float_transpose(ds), q_block));
    }
    (concat::<B>(dq), dk.expect("at least one block"), dv.expect("at least one block"))
}
