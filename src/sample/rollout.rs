//! Rollouts for the online methods (docs/design.md §4c): a model sampled with a stochastic
//! step whose transitions have a density — Flow-GRPO's SDE step down a flow model's σ
//! schedule, or DDPO's DDIM step with η down an ε-model's timesteps — keeping every state and
//! each transition's log-probability, so that training can score the same transitions under
//! the current policy (the GRPO / DDPO ratio) and the reference (GRPO's KL term).
//! Classifier-free guidance as in sampling ([`super::validate`]); the flow step at
//! `noise_level` 0 is the ODE, whose final latents equal [`super::validate::sample_latents`]'.

use burn::tensor::{DType, Tensor, TensorData};

use super::noise::gaussian;
use super::sde::{SdeStep, ddim_step_logprob, sde_step};
use super::validate::{Guided, Prompts};
use crate::models::denoiser::Denoiser;

/// How a rollout steps from state i to state i + 1.
#[derive(Debug, Clone)]
pub enum Stepper {
    /// The flow SDE (`noise_level` a; 0 the ODE) down `sigmas` (N + 1 values, the last 0),
    /// the model called at σ·1000.
    Flow { sigmas: Vec<f32>, noise_level: f64 },
    /// DDIM with η down the DDPM `timesteps` (N, high to low), the model called at t; the
    /// step goes to t − T/N (`alphas_cumprod` has T entries).
    Ddim { timesteps: Vec<i64>, alphas_cumprod: Vec<f64>, eta: f64 },
}

impl Stepper {
    /// Transitions in a rollout (N).
    pub fn steps(&self) -> usize {
        match self {
            Self::Flow { sigmas, .. } => sigmas.len().saturating_sub(1),
            Self::Ddim { timesteps, .. } => timesteps.len(),
        }
    }

    /// The time the model is given at step `i`.
    pub fn model_time(&self, i: usize) -> f32 {
        match self {
            Self::Flow { sigmas, .. } => sigmas[i] * 1000.0,
            Self::Ddim { timesteps, .. } => timesteps[i] as f32,
        }
    }

    /// Whether the transitions are random (and so have log-probabilities).
    pub fn is_stochastic(&self) -> bool {
        match self {
            Self::Flow { noise_level, .. } => *noise_level > 0.0,
            Self::Ddim { eta, .. } => *eta > 0.0,
        }
    }

    /// Step `i` from `x` [B, C, h, w] with the model's (guided) prediction `pred`: a new
    /// sample drawn with `noise`, or `prev` scored.
    pub fn step(
        &self,
        i: usize,
        x: Tensor<4>,
        pred: Tensor<4>,
        noise: Option<Tensor<4>>,
        prev: Option<Tensor<4>>,
    ) -> SdeStep {
        let b = x.dims()[0];
        match self {
            Self::Flow { sigmas, noise_level } => {
                sde_step(x, pred, noise, &vec![sigmas[i]; b], &vec![sigmas[i + 1]; b], *noise_level, prev)
            }
            Self::Ddim { timesteps, alphas_cumprod, eta } => {
                ddim_step_logprob(x, pred, noise, &vec![timesteps[i]; b], alphas_cumprod, timesteps.len(), *eta, prev)
            }
        }
    }
}

/// What a rollout keeps: the states x_0 (noise) … x_N (the sample), one log-probability per
/// transition, and how it stepped.
#[derive(Debug, Clone)]
pub struct Trajectory {
    pub states: Vec<Tensor<4>>,
    /// [K] per step: log N(x_{i+1}; μ_i, std_i²) averaged over (C,h,w).
    pub log_probs: Vec<Tensor<1>>,
    pub stepper: Stepper,
}

impl Trajectory {
    /// The final latents [K, C, h, w].
    pub fn sample(&self) -> &Tensor<4> {
        self.states.last().expect("a rollout has states")
    }
}

/// One step's noise for K images, from the rollout seed and the step (so that a resumed
/// run draws the same noise).
fn step_noise(seed: u64, step: usize, like: &Tensor<4>) -> Tensor<4> {
    let dims = like.dims();
    let n = dims.iter().product();
    let seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step as u64 + 1);
    Tensor::from_data(TensorData::new(gaussian(seed, n), dims), (&like.device(), DType::F32))
}

/// Samples `noise` [K, C, h, w] (unit variance, the model's latent space) with `stepper`,
/// the model conditioned on `prompts` (classifier-free guidance when `guidance` > 1).
pub fn rollout(
    model: &impl Denoiser,
    prompts: &Prompts,
    noise: Tensor<4>,
    stepper: &Stepper,
    guidance: f64,
    seed: u64,
) -> Trajectory {
    let guided = Guided::new(prompts, guidance);
    let mut x = noise;
    let mut states = vec![x.clone()];
    let mut log_probs = Vec::with_capacity(stepper.steps());
    for i in 0..stepper.steps() {
        let pred = guided.predict(model, x.clone(), stepper.model_time(i));
        let xi = stepper.is_stochastic().then(|| step_noise(seed, i, &x));
        let SdeStep { prev_sample, log_prob, .. } = stepper.step(i, x, pred, xi, None);
        x = prev_sample;
        states.push(x.clone());
        log_probs.push(log_prob);
    }
    Trajectory { states, log_probs, stepper: stepper.clone() }
}

/// The log-probabilities of a trajectory's transition `step` under `model` (the same
/// prompts and guidance): the policy's side of the ratio, with its step mean and scale for
/// GRPO's KL term.
pub fn score_step(
    model: &impl Denoiser,
    prompts: &Prompts,
    trajectory: &Trajectory,
    step: usize,
    guidance: f64,
) -> SdeStep {
    let x = trajectory.states[step].clone();
    let stepper = &trajectory.stepper;
    let pred = Guided::new(prompts, guidance).predict(model, x.clone(), stepper.model_time(step));
    stepper.step(step, x, pred, None, Some(trajectory.states[step + 1].clone()))
}
