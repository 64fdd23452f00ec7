//! What a sampler provides to the denoising loop.

use burn::tensor::Tensor;

pub trait Sampler {
    /// Model timesteps, high to low.
    fn timesteps(&self) -> &[f32];
    /// The initial noise is unit noise times this.
    fn init_noise_sigma(&self) -> f32;
    /// The model input at step `i` is the sample times this (`scale_model_input`).
    fn input_scale(&self, i: usize) -> f32;
    /// The sample after step `i`, given the (guided) ε prediction.
    fn step(&self, i: usize, x: Tensor<4>, eps: Tensor<4>) -> Tensor<4>;
}
