//! The training objective, apart from the model: how a clean latent and its noise become
//! the model's input and target, which timesteps (or σ) training draws, what the model is
//! told the time is, and how samples are drawn back. Two objectives:
//!
//! - **ε-prediction** on a DDPM schedule (SDXL): x_t = √ᾱ_t·x₀ + √(1−ᾱ_t)·ε, target ε,
//!   t uniform in 0..T;
//! - **flow matching** (SD3, FLUX, the flow toy): x_σ = (1−σ)·x₀ + σ·ε, target ε − x₀, σ from
//!   the shifted discrete grid of diffusers' `FlowMatchEulerDiscreteScheduler` at an index
//!   drawn as `compute_density_for_timestep_sampling` draws it (logit-normal or uniform).
//!
//! Per-row errors are the same for both (mean over (C,h,w) of the squared difference, no
//! weighting: diffusers' weighting for logit-normal sampling is 1), so every loss in
//! `losses` works on either unchanged.

mod flow;

use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use flow::{FlowConfig, FlowMatching, TimestepDensity};

use crate::sample::euler::EulerSchedule;
use crate::sample::flow_euler::FlowMatchEuler;
use crate::sample::sampler::Sampler;
use crate::sample::schedule::NoiseSchedule;

/// Which objective a run trains with (`objective = "flow"` in a config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveName {
    /// ε-prediction on the DDPM schedule (SDXL).
    #[default]
    Epsilon,
    /// Rectified-flow velocity matching (SD3, FLUX).
    Flow,
}

impl ObjectiveName {
    pub fn is_epsilon(&self) -> bool {
        *self == Self::Epsilon
    }

    /// Method parameters whose defaults differ on this objective. MaPO's margin scale T
    /// (`num_train_timesteps`) was tuned for ε errors; velocity errors are about twice as
    /// large and the margin saturates at T = 1000, so flow runs default to T = 100, the
    /// value the flow toy's sweep chose (docs/experiments.md, experiments/toy-flow-sweep.toml).
    pub fn method_defaults(&self, method: &str) -> &'static [(&'static str, f64)] {
        match (self, method) {
            (Self::Flow, "mapo") => &[("num_train_timesteps", 100.0)],
            _ => &[],
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Epsilon => "epsilon",
            Self::Flow => "flow",
        }
    }
}

/// An objective with its schedule.
#[derive(Debug, Clone)]
pub enum Objective {
    Epsilon(NoiseSchedule),
    Flow(FlowMatching),
}

impl From<NoiseSchedule> for Objective {
    fn from(schedule: NoiseSchedule) -> Self {
        Self::Epsilon(schedule)
    }
}

impl Objective {
    /// SDXL's ε-prediction on its DDPM schedule.
    pub fn sdxl() -> Self {
        Self::Epsilon(NoiseSchedule::sdxl())
    }

    /// `name` with SDXL's schedule (ε) or `flow`'s settings (default: diffusers' SD3 ones).
    pub fn new(name: ObjectiveName, flow: Option<&FlowConfig>) -> Result<Self> {
        Ok(match name {
            ObjectiveName::Epsilon => Self::sdxl(),
            ObjectiveName::Flow => Self::Flow(FlowMatching::new(flow.cloned().unwrap_or_default())?),
        })
    }

    pub fn name(&self) -> ObjectiveName {
        match self {
            Self::Epsilon(_) => ObjectiveName::Epsilon,
            Self::Flow(_) => ObjectiveName::Flow,
        }
    }

    /// The number of discrete training timesteps T (the range of [`Self::draw_timestep`]).
    pub fn num_train_timesteps(&self) -> usize {
        match self {
            Self::Epsilon(s) => s.num_train_timesteps(),
            Self::Flow(f) => f.num_train_timesteps(),
        }
    }

    /// One training timestep index in 0..T from a pair's generator (ε: uniform, the DDPM
    /// timestep itself; flow: an index into the σ grid drawn from the configured density).
    pub fn draw_timestep(&self, rng: &mut ChaCha8Rng) -> i64 {
        match self {
            Self::Epsilon(s) => rng.random_range(0..s.num_train_timesteps() as i64),
            Self::Flow(f) => f.draw_index(rng),
        }
    }

    /// The model's input for clean `x0` and `noise` at the rows' timestep indices.
    pub fn noisy(&self, x0: Tensor<4>, noise: Tensor<4>, timesteps: &[i64]) -> Tensor<4> {
        match self {
            Self::Epsilon(s) => s.add_noise(x0, noise, timesteps),
            Self::Flow(f) => f.interpolate(x0, noise, timesteps),
        }
    }

    /// What the model should predict: ε, or the velocity ε − x₀.
    pub fn target(&self, x0: Tensor<4>, noise: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Epsilon(_) => noise,
            Self::Flow(_) => noise - x0,
        }
    }

    /// The time the model is given for each row, [B] f32: the DDPM timestep itself, or
    /// σ·T as diffusers' SD3 training passes it.
    pub fn model_timesteps(&self, timesteps: &[i64], device: &Device) -> Tensor<1> {
        let t: Vec<f32> = match self {
            Self::Epsilon(_) => timesteps.iter().map(|&t| t as f32).collect(),
            Self::Flow(f) => timesteps.iter().map(|&i| f.timestep(i)).collect(),
        };
        let n = t.len();
        Tensor::from_data(TensorData::new(t, [n]), device)
    }

    /// The sampler with which the model's samples are drawn in `steps` steps (ε: Euler as
    /// SDXL's pipeline; flow: FlowMatchEuler with the objective's shift).
    pub fn sampler(&self, steps: usize) -> Result<Box<dyn Sampler>> {
        Ok(match self {
            Self::Epsilon(s) => Box::new(EulerSchedule::new(s, steps, "leading", 1)?),
            Self::Flow(f) => Box::new(FlowMatchEuler::new(steps, f.config.shift, f.num_train_timesteps())?),
        })
    }
}
