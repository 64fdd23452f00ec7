//! Memory-efficient attention as a Burn backend extension with its own backward.
//!
//! Burn 0.22's autodiff lowers `attention` to a materialised softmax and keeps the score
//! and probability matrices of every layer for the backward pass. This op keeps only Q, K,
//! V, the output and the per-row log-sum-exp, and recomputes the probabilities block by
//! block in the backward ([`super::blocked`]). The same code runs on every backend: the
//! blocks are plain tensor ops of the backend under autodiff.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::AttentionModuleOptions;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};

use super::blocked::{self, BlockPlan};

#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cpu"))]
use burn::backend::Cube;
#[cfg(feature = "flex")]
use burn::backend::Flex;

/// The op, dispatched to the backend of its inputs. Outside autodiff it is Burn's own
/// (possibly fused) attention; under autodiff it is the blocked op below.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda", feature = "cpu")),
    Autodiff
)]
pub trait EfficientAttention: Backend {
    /// q [B, H, Lq, d], k and v [B, H, Lk, d] → [B, H, Lq, d]; `rows` query rows per block.
    fn efficient_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        rows: usize,
    ) -> FloatTensor<Self> {
        let _ = rows;
        Self::attention(q, k, v, None, None, options(causal))
    }
}

/// Burn's attention options for a plain (optionally causal) call.
pub fn options(causal: bool) -> AttentionModuleOptions {
    AttentionModuleOptions { is_causal: causal, ..Default::default() }
}

#[cfg(feature = "flex")]
impl EfficientAttention for Flex {}
#[cfg(any(feature = "wgpu", feature = "cuda", feature = "cpu"))]
impl EfficientAttention for Cube {}

#[derive(Debug)]
struct BlockedAttention;

/// What the backward needs: Q, K, V, the output, the log-sum-exp and the block plan.
type Saved<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, BlockPlan);

impl<B: Backend> Backward<B, 3> for BlockedAttention {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (q, k, v, out, lse, plan) = ops.state;
        let (dq, dk, dv) = blocked::backward::<B>(q, k, v, out, lse, grad, &plan);
        for (node, g) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: Backend, C: CheckpointStrategy> EfficientAttention for Autodiff<B, C> {
    fn efficient_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        rows: usize,
    ) -> FloatTensor<Self> {
        let d = q.primitive().shape().dims::<4>()[3];
        let plan = BlockPlan { rows, causal, scale: 1.0 / (d as f64).sqrt() };
        let (q, q_node) = q.into_parts();
        let (k, k_node) = k.into_parts();
        let (v, v_node) = v.into_parts();
        // Compute bound: recomputing it would cost as much as the forward it replaces.
        match BlockedAttention.prepare::<C>([q_node, k_node, v_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let (out, lse) = blocked::forward::<B>(q.clone(), k.clone(), v.clone(), &plan);
                prep.finish((q, k, v, out.clone(), lse, plan), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::attention(q, k, v, None, None, options(causal))),
        }
    }
}
