//! Global gradient-norm clipping, as PyTorch's `clip_grad_norm_`: one L2 norm over every
//! parameter's gradient, and one scale applied to all of them.

use burn::tensor::{DType, Tensor};

use super::optim::GradMap;

/// The global L2 norm of all gradients (per-tensor sums in f32, total in f64). The
/// per-tensor sums are read back in one transfer: the SDXL UNet has 1,680 parameter tensors, and
/// on a GPU each read is a synchronisation.
pub fn global_grad_norm(grads: &GradMap) -> f64 {
    if grads.is_empty() {
        return 0.0;
    }
    let sums: Vec<Tensor<1>> = grads.values().map(|g| g.clone().cast(DType::F32).square().sum()).collect();
    let sums: Vec<f32> = Tensor::cat(sums, 0).into_data().convert::<f32>().try_to_vec().expect("f32 after the cast");
    sums.iter().map(|&s| s as f64).sum::<f64>().sqrt()
}

/// The factor `clip_grad_norm_` multiplies gradients by: `min(1, max / (norm + 1e-6))`;
/// `max_norm <= 0` disables clipping.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    if max_norm <= 0.0 { 1.0 } else { (max_norm / (norm + 1e-6)).min(1.0) }
}
