//! DDIM sampling (η = 0) as diffusers' `DDIMScheduler` runs it.

use anyhow::{Result, bail};
use burn::tensor::Tensor;

use super::sampler::Sampler;
use super::schedule::NoiseSchedule;

#[derive(Debug, Clone)]
pub struct DdimSchedule {
    pub timesteps: Vec<f32>,
    /// ᾱ at each timestep and at the one it steps to.
    alphas: Vec<f32>,
    alphas_prev: Vec<f32>,
    /// Clamp the predicted x₀ to ±this (`clip_sample`), or not.
    clip_sample: Option<f32>,
}

impl DdimSchedule {
    /// `set_alpha_to_one`: the last step lands on ᾱ = 1 (else on ᾱ₀), as diffusers' flag.
    pub fn new(
        schedule: &NoiseSchedule,
        steps: usize,
        spacing: &str,
        steps_offset: usize,
        set_alpha_to_one: bool,
        clip_sample: Option<f32>,
    ) -> Result<Self> {
        let t_max = schedule.num_train_timesteps();
        if steps == 0 || steps > t_max {
            bail!("sampling steps must be in 1..={t_max}, got {steps}");
        }
        let ratio = t_max / steps;
        let timesteps: Vec<usize> = match spacing {
            "leading" => (0..steps).rev().map(|i| i * ratio + steps_offset).collect(),
            "trailing" => {
                let r = t_max as f64 / steps as f64;
                (1..=steps).rev().map(|i| ((i as f64 * r).round() as usize).saturating_sub(1)).collect()
            }
            "linspace" => {
                let last = (t_max - 1) as f64;
                (0..steps).rev().map(|i| (i as f64 * last / (steps.max(2) - 1) as f64).round() as usize).collect()
            }
            other => bail!("timestep_spacing {other:?}: expected leading, trailing or linspace"),
        };
        let ac = &schedule.alphas_cumprod;
        let final_alpha = if set_alpha_to_one { 1.0 } else { ac[0] };
        let alphas = timesteps.iter().map(|&t| ac[t.min(t_max - 1)]).collect();
        let alphas_prev =
            timesteps.iter().map(|&t| if t >= ratio { ac[(t - ratio).min(t_max - 1)] } else { final_alpha }).collect();
        Ok(Self { timesteps: timesteps.iter().map(|&t| t as f32).collect(), alphas, alphas_prev, clip_sample })
    }
}

impl Sampler for DdimSchedule {
    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn input_scale(&self, _: usize) -> f32 {
        1.0
    }

    /// x₀ = (x − √(1−ᾱ)·ε)/√ᾱ; x_prev = √ᾱ_prev·x₀ + √(1−ᾱ_prev)·ε.
    fn step(&self, i: usize, x: Tensor<4>, eps: Tensor<4>) -> Tensor<4> {
        let (a, a_prev) = (self.alphas[i] as f64, self.alphas_prev[i] as f64);
        let mut x0 = (x - eps.clone().mul_scalar((1.0 - a).sqrt())).div_scalar(a.sqrt());
        if let Some(c) = self.clip_sample {
            x0 = x0.clamp(-c, c);
        }
        x0.mul_scalar(a_prev.sqrt()) + eps.mul_scalar((1.0 - a_prev).sqrt())
    }
}
