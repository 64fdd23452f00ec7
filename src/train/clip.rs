//! Global gradient-norm clipping, as PyTorch's `clip_grad_norm_`: one L2 norm over every
//! parameter's gradient, and one scale applied to all of them.

use burn::tensor::DType;

use super::optim::GradMap;

/// The global L2 norm of all gradients (per-tensor sums in f32, total in f64).
pub fn global_grad_norm(grads: &GradMap) -> f64 {
    let sum: f64 = grads.values().map(|g| g.clone().cast(DType::F32).square().sum().into_scalar::<f32>() as f64).sum();
    sum.sqrt()
}

/// The factor `clip_grad_norm_` multiplies gradients by: `min(1, max / (norm + 1e-6))`;
/// `max_norm <= 0` disables clipping.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 { 1.0 } else { (max_norm / (norm + 1e-6)).min(1.0) }
}
