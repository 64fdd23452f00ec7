//! Global gradient-norm clipping, as PyTorch's `clip_grad_norm_`: one L2 norm over every
//! parameter's gradient, and one scale applied to all of them.

use burn::module::Module;
use burn::tensor::{DType, Gradients};

use crate::models::named::param_grads;

/// The global L2 norm of all gradients (accumulated in f32 or better).
pub fn global_grad_norm<M: Module>(module: &M, grads: &Gradients) -> f64 {
    let mut sum = 0f64;
    for (_, grad, _) in param_grads(module, grads) {
        if let Some(g) = grad {
            sum += g.cast(DType::F32).square().sum().into_scalar::<f32>() as f64;
        }
    }
    sum.sqrt()
}

/// The factor `clip_grad_norm_` multiplies gradients by: `min(1, max / (norm + 1e-6))`;
/// `max_norm <= 0` disables clipping.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 { 1.0 } else { (max_norm / (norm + 1e-6)).min(1.0) }
}
