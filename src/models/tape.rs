//! What a block-checkpointed backward pass is written with (SD3's and FLUX's; the UNet has
//! its own unit program): plain tensors lifted into tracked autodiff leaves, a surrogate
//! whose backward sends a given gradient into an output, and gradient sums.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Gradients, Tensor};

use super::named::param_grads;

/// An autodiff leaf holding a plain tensor, tracked so its gradient can be read.
pub(crate) fn leaf<const D: usize>(t: &Tensor<D>) -> Tensor<D> {
    Tensor::from_inner(t.clone()).require_grad()
}

/// Σ y·g with a plain upstream gradient `g`: its backward sends `g` into `y`.
pub(crate) fn dot<const D: usize>(y: Tensor<D>, g: Tensor<D>) -> Tensor<1> {
    (y * Tensor::from_inner(g)).sum()
}

/// Two optional gradients of one tensor, summed.
pub(crate) fn add<const D: usize>(acc: Option<Tensor<D>>, g: Option<Tensor<D>>) -> Option<Tensor<D>> {
    match (acc, g) {
        (Some(a), Some(g)) => Some(a + g),
        (a, g) => a.or(g),
    }
}

/// Adds the gradients one partial backward pass gave `module`'s parameters into `out`
/// (flattened, by diffusers name): a parameter read by several blocks sums their parts.
pub(crate) fn accumulate<M: Module>(out: &mut BTreeMap<String, Tensor<1>>, module: &M, backward: &Gradients) {
    for (name, g, _) in param_grads(module, backward) {
        if let Some(g) = g {
            let total = match out.remove(&name) {
                Some(acc) => acc + g,
                None => g,
            };
            out.insert(name, total);
        }
    }
}
