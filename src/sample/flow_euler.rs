//! Euler sampling of a flow-matching model as diffusers' `FlowMatchEulerDiscreteScheduler`
//! runs it: for SD3 (static shift) σ from linspace(σ_max·N, σ_min·N, n)/N shifted; for
//! FLUX σ = linspace(1, 1/n, n) given by the pipeline, shifted by `mu` (dynamic shifting) or
//! statically; then 0. The model is called at σ·N; x ← x + (σ_{i+1} − σ_i)·v.

use anyhow::{Result, bail};
use burn::tensor::Tensor;

use super::sampler::Sampler;

#[derive(Debug, Clone)]
pub struct FlowMatchEuler {
    /// σ·N for each step (f32), high to low.
    pub timesteps: Vec<f32>,
    /// σ for each step, then a final 0.
    pub sigmas: Vec<f32>,
}

/// diffusers' static shift of σ, σ' = s·σ / (1 + (s − 1)·σ), in f32 as torch computes it on
/// the scheduler's f32 grid.
pub fn shift_sigma(shift: f64, sigma: f32) -> f32 {
    let s = shift as f32;
    s * sigma / (1.0 + (s - 1.0) * sigma)
}

impl FlowMatchEuler {
    /// `steps` sampling steps for a scheduler with `shift` and `num_train_timesteps`.
    pub fn new(steps: usize, shift: f64, num_train_timesteps: usize) -> Result<Self> {
        if steps == 0 || steps > num_train_timesteps {
            bail!("sampling steps must be in 1..={num_train_timesteps}, got {steps}");
        }
        let n = num_train_timesteps as f64;
        // The scheduler's σ_max and σ_min are its f32 grid's ends (σ = 1 and 1/N, shifted).
        let sigma_max = shift_sigma(shift, 1.0) as f64;
        let sigma_min = shift_sigma(shift, 1.0 / num_train_timesteps as f32) as f64;
        // `set_timesteps`: numpy linspace in f64, σ = t/N, shifted in f64, then f32.
        let (hi, lo) = (sigma_max * n, sigma_min * n);
        let sigmas: Vec<f32> = (0..steps)
            .map(|i| {
                let t = if steps == 1 { hi } else { hi + (lo - hi) * i as f64 / (steps - 1) as f64 };
                let s = t / n;
                (shift * s / (1.0 + (shift - 1.0) * s)) as f32
            })
            .collect();
        Ok(Self::finish(sigmas, num_train_timesteps))
    }

    /// FLUX's schedule: the pipeline's σ = linspace(1, 1/n, n) (numpy f64, then f32), shifted
    /// with `mu` as `time_shift` does it (e^mu / (e^mu + (1/σ − 1)), numpy's f32 arithmetic
    /// with e^mu rounded to f32) when `mu` is given, else statically by `shift`.
    pub fn flux(steps: usize, mu: Option<f64>, shift: f64, num_train_timesteps: usize) -> Result<Self> {
        if steps == 0 || steps > num_train_timesteps {
            bail!("sampling steps must be in 1..={num_train_timesteps}, got {steps}");
        }
        let (start, stop) = (1.0f64, 1.0 / steps as f64);
        let grid = (0..steps).map(|i| match i {
            0 => start,
            i if i + 1 == steps => stop,
            i => i as f64 * ((stop - start) / (steps - 1) as f64) + start,
        });
        let sigmas = grid
            .map(|s| s as f32)
            .map(|s| match mu {
                Some(mu) => {
                    let e = mu.exp() as f32;
                    e / (e + (1.0 / s - 1.0))
                }
                None => shift_sigma(shift, s),
            })
            .collect();
        Ok(Self::finish(sigmas, num_train_timesteps))
    }

    fn finish(mut sigmas: Vec<f32>, num_train_timesteps: usize) -> Self {
        let timesteps = sigmas.iter().map(|s| s * num_train_timesteps as f32).collect();
        sigmas.push(0.0);
        Self { timesteps, sigmas }
    }
}

/// FLUX's `calculate_shift`: mu grows linearly with the image's token count, from
/// `base_shift` at `base_seq_len` to `max_shift` at `max_seq_len` (f64, as Python computes it).
pub fn calculate_shift(
    image_seq_len: usize,
    base_seq_len: usize,
    max_seq_len: usize,
    base_shift: f64,
    max_shift: f64,
) -> f64 {
    let m = (max_shift - base_shift) / (max_seq_len as f64 - base_seq_len as f64);
    let b = base_shift - m * base_seq_len as f64;
    image_seq_len as f64 * m + b
}

impl Sampler for FlowMatchEuler {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn input_scale(&self, _i: usize) -> f32 {
        1.0
    }

    /// The prediction is a velocity: `x_{i+1} = x_i + (σ_{i+1} − σ_i)·v`.
    fn step(&self, i: usize, x: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
        x + v.mul_scalar(self.sigmas[i + 1] - self.sigmas[i])
    }
}
