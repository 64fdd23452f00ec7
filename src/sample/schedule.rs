//! The training noise schedule of SDXL (DDPM, "scaled_linear" betas, ε-prediction).

use burn::tensor::{Device, Tensor, TensorData};

/// `alphas_cumprod` for `betas = linspace(√β_start, √β_end, T)²`, computed with the same
/// operations as diffusers (`torch.linspace` in f32; `torch.cumprod`, which on CPU
/// accumulates in f64 and stores f32), so that noised latents match PyTorch's.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    pub fn scaled_linear(steps: usize, beta_start: f64, beta_end: f64) -> Self {
        let (start, end) = ((beta_start.sqrt()) as f32, (beta_end.sqrt()) as f32);
        let step = (end - start) / (steps as f32 - 1.0);
        let half = steps / 2;
        let mut acc = 1f64;
        let alphas_cumprod = (0..steps)
            .map(|i| {
                // torch.linspace fills the first half from the start, the second from the end.
                let s = if i < half { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 };
                acc *= (1.0 - s * s) as f64;
                acc as f32
            })
            .collect();
        Self { alphas_cumprod }
    }

    /// SDXL's schedule: 1000 steps, β from 0.00085 to 0.012.
    pub fn sdxl() -> Self {
        Self::scaled_linear(1000, 0.00085, 0.012)
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// `(√ᾱ_t, √(1−ᾱ_t))` for each timestep, as [B] tensors.
    pub fn noise_coefficients(&self, timesteps: &[i64], device: &Device) -> (Tensor<1>, Tensor<1>) {
        let a: Vec<f32> = timesteps.iter().map(|&t| self.alphas_cumprod[t as usize]).collect();
        let n = a.len();
        let sqrt_a: Vec<f32> = a.iter().map(|v| v.sqrt()).collect();
        let sqrt_1ma: Vec<f32> = a.iter().map(|v| (1.0 - v).sqrt()).collect();
        (
            Tensor::from_data(TensorData::new(sqrt_a, [n]), device),
            Tensor::from_data(TensorData::new(sqrt_1ma, [n]), device),
        )
    }

    /// `x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε` (diffusers' `add_noise`).
    pub fn add_noise(&self, x0: Tensor<4>, noise: Tensor<4>, timesteps: &[i64]) -> Tensor<4> {
        let (a, b) = self.noise_coefficients(timesteps, &x0.device());
        let dtype = x0.dtype();
        let a = a.cast(dtype).reshape([-1, 1, 1, 1]);
        let b = b.cast(dtype).reshape([-1, 1, 1, 1]);
        x0 * a + noise * b
    }
}
