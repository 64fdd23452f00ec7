//! Flow matching as diffusers trains SD3 (`train_dreambooth_lora_sd3.py`): an index into
//! the scheduler's discrete σ grid drawn from a density, x_σ = (1−σ)·x₀ + σ·ε, the model
//! called at σ·T, target ε − x₀.

use anyhow::{Result, ensure};
use burn::tensor::{Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::sample::flow_euler::shift_sigma;
use crate::sample::noise::standard_normal;

/// How training draws σ (diffusers' `weighting_scheme` for `compute_density_for_timestep_sampling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepDensity {
    /// u = sigmoid(N(logit_mean, logit_std)): SD3's default.
    #[default]
    LogitNormal,
    /// u uniform in [0, 1).
    Uniform,
}

/// `[flow]` in a config: the σ grid's shift and the density σ is drawn from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    /// The scheduler's `shift` (SD3: 3.0; 1.0 leaves the grid linear).
    pub shift: f64,
    pub num_train_timesteps: usize,
    pub density: TimestepDensity,
    pub logit_mean: f64,
    pub logit_std: f64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            shift: 3.0,
            num_train_timesteps: 1000,
            density: TimestepDensity::LogitNormal,
            logit_mean: 0.0,
            logit_std: 1.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FlowMatching {
    pub config: FlowConfig,
    /// σ of each grid index, high to low (f32, as the scheduler stores them).
    pub sigmas: Vec<f32>,
    /// N: the model is called at σ·N.
    time_scale: f32,
}

impl FlowMatching {
    pub fn new(config: FlowConfig) -> Result<Self> {
        ensure!(config.shift.is_finite() && config.shift > 0.0, "flow.shift {} must be > 0", config.shift);
        ensure!(
            (2..=100_000).contains(&config.num_train_timesteps),
            "flow.num_train_timesteps {} must be in 2..=100000",
            config.num_train_timesteps
        );
        ensure!(
            config.logit_mean.is_finite() && config.logit_std.is_finite() && config.logit_std > 0.0,
            "flow.logit_mean must be finite and flow.logit_std > 0"
        );
        let n = config.num_train_timesteps;
        // `FlowMatchEulerDiscreteScheduler.__init__`: timesteps N..1, σ = t/N, shifted.
        let sigmas = (0..n).map(|i| shift_sigma(config.shift, (n - i) as f32 / n as f32)).collect();
        Ok(Self { config, sigmas, time_scale: n as f32 })
    }

    /// A "grid" of exactly these σ (index i is `sigmas[i]`), the model called at σ·1000:
    /// `forward train-step` takes σ per row rather than drawing it.
    pub fn at_sigmas(sigmas: Vec<f32>) -> Result<Self> {
        ensure!(!sigmas.is_empty(), "no σ given");
        if let Some(s) = sigmas.iter().find(|s| !(s.is_finite() && **s > 0.0 && **s < 1.0)) {
            anyhow::bail!("σ = {s} is outside (0, 1)");
        }
        let config = FlowConfig::default();
        let time_scale = config.num_train_timesteps as f32;
        Ok(Self { config, sigmas, time_scale })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.sigmas.len()
    }

    /// `indices = (u · N).long()` for u from the density; u = 1 (a sigmoid that rounds up)
    /// is kept inside the grid.
    pub fn draw_index(&self, rng: &mut ChaCha8Rng) -> i64 {
        let u = match self.config.density {
            TimestepDensity::LogitNormal => {
                let z = self.config.logit_mean + self.config.logit_std * standard_normal(rng) as f64;
                1.0 / (1.0 + (-z).exp())
            }
            TimestepDensity::Uniform => rng.random::<f64>(),
        };
        let n = self.num_train_timesteps();
        ((u * n as f64) as usize).min(n - 1) as i64
    }

    pub fn sigma(&self, index: i64) -> f32 {
        self.sigmas[index as usize]
    }

    /// The model's timestep at a grid index: σ·N in f32 (the scheduler's `timesteps`).
    pub fn timestep(&self, index: i64) -> f32 {
        self.sigma(index) * self.time_scale
    }

    /// x_σ = (1 − σ)·x₀ + σ·ε, σ per row.
    pub fn interpolate(&self, x0: Tensor<4>, noise: Tensor<4>, indices: &[i64]) -> Tensor<4> {
        let device = x0.device();
        let dtype = x0.dtype();
        let s: Vec<f32> = indices.iter().map(|&i| self.sigma(i)).collect();
        let one_minus: Vec<f32> = s.iter().map(|v| 1.0 - v).collect();
        let n = s.len();
        let col =
            |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [n]), &device).cast(dtype).reshape([-1, 1, 1, 1]);
        x0 * col(one_minus) + noise * col(s)
    }
}
