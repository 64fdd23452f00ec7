//! Rollouts for the online methods (docs/design.md §4c): a flow model sampled with
//! Flow-GRPO's SDE step, keeping every state and each transition's log-probability, so that
//! training can score the same transitions under the current policy (the GRPO ratio) and the
//! reference (its KL term). Classifier-free guidance as in sampling ([`super::validate`]);
//! `noise_level` 0 is the ODE, whose final latents equal [`super::validate::sample_latents`]'.

use burn::tensor::{DType, Tensor, TensorData};

use super::noise::gaussian;
use super::sde::{SdeStep, sde_step};
use super::validate::{Guided, Prompts};
use crate::models::denoiser::Denoiser;

/// What a rollout keeps: the states x_0 (noise) … x_N (the sample), one log-probability per
/// transition, and the σ schedule (N + 1 values, the last 0).
#[derive(Debug, Clone)]
pub struct Trajectory {
    pub states: Vec<Tensor<4>>,
    /// [K] per step: log N(x_{i+1}; μ_i, std_i²) averaged over (C,h,w).
    pub log_probs: Vec<Tensor<1>>,
    pub sigmas: Vec<f32>,
}

impl Trajectory {
    /// The final latents [K, C, h, w].
    pub fn sample(&self) -> &Tensor<4> {
        self.states.last().expect("a rollout has states")
    }
}

/// One step's SDE noise for K images, from the rollout seed and the step (so that a resumed
/// run draws the same noise).
fn step_noise(seed: u64, step: usize, like: &Tensor<4>) -> Tensor<4> {
    let dims = like.dims();
    let n = dims.iter().product();
    let seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step as u64 + 1);
    Tensor::from_data(TensorData::new(gaussian(seed, n), dims), (&like.device(), DType::F32))
}

/// Samples `noise` [K, C, h, w] (unit variance, the model's latent space) down the σ schedule
/// `sigmas` (N + 1 values ending in 0) with the SDE step at `noise_level`, the model called at
/// σ·1000 with `prompts` (classifier-free guidance when `guidance` > 1).
pub fn rollout(
    model: &impl Denoiser,
    prompts: &Prompts,
    noise: Tensor<4>,
    sigmas: &[f32],
    guidance: f64,
    noise_level: f64,
    seed: u64,
) -> Trajectory {
    let k = noise.dims()[0];
    let guided = Guided::new(prompts, guidance);
    let mut x = noise;
    let mut states = vec![x.clone()];
    let mut log_probs = Vec::with_capacity(sigmas.len().saturating_sub(1));
    for (i, pair) in sigmas.windows(2).enumerate() {
        let (s, next) = (pair[0], pair[1]);
        let v = guided.predict(model, x.clone(), s * 1000.0);
        let xi = (noise_level > 0.0).then(|| step_noise(seed, i, &x));
        let SdeStep { prev_sample, log_prob, .. } = sde_step(x, v, xi, &vec![s; k], &vec![next; k], noise_level, None);
        x = prev_sample;
        states.push(x.clone());
        log_probs.push(log_prob);
    }
    Trajectory { states, log_probs, sigmas: sigmas.to_vec() }
}

/// The log-probabilities of a trajectory's transition `step` under `model` (the same
/// prompts and guidance): the policy's side of the GRPO ratio, with its step mean and
/// scale for the KL term.
pub fn score_step(
    model: &impl Denoiser,
    prompts: &Prompts,
    trajectory: &Trajectory,
    step: usize,
    guidance: f64,
    noise_level: f64,
) -> SdeStep {
    let x = trajectory.states[step].clone();
    let k = x.dims()[0];
    let (s, next) = (trajectory.sigmas[step], trajectory.sigmas[step + 1]);
    let v = Guided::new(prompts, guidance).predict(model, x.clone(), s * 1000.0);
    let prev = trajectory.states[step + 1].clone();
    sde_step(x, v, None, &vec![s; k], &vec![next; k], noise_level, Some(prev))
}
