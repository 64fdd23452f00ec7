//! Euler discrete sampling as diffusers' `EulerDiscreteScheduler` runs it for SDXL
//! (ε-prediction, no churn, linear sigma interpolation).

use anyhow::{Result, bail};

use burn::tensor::Tensor;

use super::sampler::Sampler;
use super::schedule::NoiseSchedule;

#[derive(Debug, Clone)]
pub struct EulerSchedule {
    /// Model timesteps, high to low (as floats, as diffusers passes them).
    pub timesteps: Vec<f32>,
    /// σ for each timestep, then a final 0.
    pub sigmas: Vec<f32>,
    /// The standard deviation of the initial noise.
    pub init_noise_sigma: f32,
}

impl EulerSchedule {
    /// `spacing`: "leading" (SDXL), "trailing" or "linspace"; `steps_offset`: 1 for SDXL.
    pub fn new(schedule: &NoiseSchedule, steps: usize, spacing: &str, steps_offset: usize) -> Result<Self> {
        let t_max = schedule.num_train_timesteps();
        if steps == 0 || steps > t_max {
            bail!("sampling steps must be in 1..={t_max}, got {steps}");
        }
        let timesteps: Vec<f32> = match spacing {
            "leading" => {
                let ratio = t_max / steps;
                (0..steps).rev().map(|i| (i * ratio + steps_offset) as f32).collect()
            }
            "trailing" => {
                let ratio = t_max as f64 / steps as f64;
                (1..=steps).rev().map(|i| ((i as f64 * ratio).round() - 1.0) as f32).collect()
            }
            "linspace" => {
                let last = (t_max - 1) as f64;
                (0..steps).rev().map(|i| (i as f64 * last / (steps.max(2) - 1) as f64) as f32).collect()
            }
            other => bail!("timestep_spacing {other:?}: expected leading, trailing or linspace"),
        };
        // σ_t = sqrt((1 − ᾱ_t) / ᾱ_t) in f32, linearly interpolated at fractional timesteps.
        let table: Vec<f32> = schedule.alphas_cumprod.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| {
                let (lo, frac) = (t.floor() as usize, t as f64 - t.floor() as f64);
                let hi = (lo + 1).min(table.len() - 1);
                (table[lo] as f64 * (1.0 - frac) + table[hi] as f64 * frac) as f32
            })
            .collect();
        let max = sigmas.iter().cloned().fold(0f32, f32::max);
        let init_noise_sigma = if spacing == "leading" { (max * max + 1.0).sqrt() } else { max };
        sigmas.push(0.0);
        Ok(Self { timesteps, sigmas, init_noise_sigma })
    }
}

impl Sampler for EulerSchedule {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    /// diffusers' `scale_model_input`: x / √(σ² + 1).
    fn input_scale(&self, i: usize) -> f32 {
        1.0 / (self.sigmas[i] * self.sigmas[i] + 1.0).sqrt()
    }

    /// `x_{i+1} = x_i + ε · (σ_{i+1} − σ_i)` for an ε-prediction.
    fn step(&self, i: usize, x: Tensor<4>, eps: Tensor<4>) -> Tensor<4> {
        x + eps.mul_scalar(self.sigmas[i + 1] - self.sigmas[i])
    }
}
