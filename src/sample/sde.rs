//! Flow-GRPO's stochastic sampler step with its log-probability (docs/design.md §4c): the
//! flow ODE's Euler step turned into an SDE with the same marginals, whose Gaussian
//! transition the policy-gradient methods score. In f32, as flow_grpo computes it.
//!
//! dt = σ_next − σ (< 0), s = a·√(σ / (1 − σ)) (at σ = 1 the denominator is 1 − σ_next),
//! μ = x·(1 + s²·dt/(2σ)) + v·(1 + s²·(1 − σ)/(2σ))·dt, x' = μ + s·√(−dt)·ξ, and
//! log_prob = mean over (C,h,w) of log N(x'; μ, s²·(−dt)). `noise_level` a = 0 is the Euler
//! ODE step (std 0: its log-prob is reported as 0, there is no density to score).

use burn::tensor::{DType, Tensor, TensorData};

/// flow_grpo's default `noise_level`.
pub const NOISE_LEVEL: f64 = 0.7;

/// One step's outputs.
#[derive(Debug, Clone)]
pub struct SdeStep {
    /// x' [B, C, h, w]: the new sample (or the given one, when scoring).
    pub prev_sample: Tensor<4>,
    /// μ [B, C, h, w].
    pub mean: Tensor<4>,
    /// The transition's standard deviation s·√(−dt) [B].
    pub std: Tensor<1>,
    /// s = a·√(σ/(1 − σ)) [B], the scale the GRPO KL term divides by.
    pub s: Tensor<1>,
    /// Mean over (C,h,w) of the log-density of `prev_sample` [B].
    pub log_prob: Tensor<1>,
}

/// Per-row scalars s and dt from σ and σ_next (host values, f32 as flow_grpo's tensors).
fn scales(sigma: &[f32], sigma_next: &[f32], noise_level: f64) -> (Vec<f32>, Vec<f32>) {
    let a = noise_level as f32;
    sigma
        .iter()
        .zip(sigma_next)
        .map(|(&s, &n)| {
            let denominator = 1.0 - if s == 1.0 { n } else { s };
            (a * (s / denominator).sqrt(), n - s)
        })
        .unzip()
}

/// The step from `latents` x at σ with the model's velocity `model_output` v, using `noise`
/// ξ for the new sample, or scoring `prev_sample` when given. σ, σ_next: one per row.
pub fn sde_step(
    latents: Tensor<4>,
    model_output: Tensor<4>,
    noise: Option<Tensor<4>>,
    sigma: &[f32],
    sigma_next: &[f32],
    noise_level: f64,
    prev_sample: Option<Tensor<4>>,
) -> SdeStep {
    let [b, _, _, _] = latents.dims();
    let device = latents.device();
    let (s, dt) = scales(sigma, sigma_next, noise_level);
    let row = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [b]), (&device, DType::F32));
    let per_row = |v: &Tensor<1>| v.clone().reshape([b, 1, 1, 1]);
    let (s_t, dt_t, sigma_t) = (row(s.clone()), row(dt.clone()), row(sigma.to_vec()));
    let s2 = s_t.clone().square();
    // μ = x·(1 + s²·dt/(2σ)) + v·(1 + s²·(1 − σ)/(2σ))·dt
    let two_sigma = sigma_t.clone().mul_scalar(2.0);
    let x_coef = s2.clone().mul(dt_t.clone()).div(two_sigma.clone()).add_scalar(1.0);
    let v_coef = s2.mul(sigma_t.neg().add_scalar(1.0)).div(two_sigma).add_scalar(1.0).mul(dt_t.clone());
    let mean = latents * per_row(&x_coef) + model_output * per_row(&v_coef);
    let std_t = s_t.clone().mul(dt_t.neg().sqrt());
    let prev_sample = match (prev_sample, noise) {
        (Some(x), _) => x,
        (None, Some(xi)) => mean.clone() + xi * per_row(&std_t),
        (None, None) => mean.clone(),
    };
    let log_prob = log_prob(&prev_sample, &mean, &std_t);
    SdeStep { prev_sample, mean, std: std_t, s: s_t, log_prob }
}

/// Mean over (C,h,w) of log N(x; μ, std²) per row: −(x − μ)²/(2·std²) − log std − log √(2π),
/// the three terms in flow_grpo's order; 0 where std is 0 (the ODE step).
pub fn log_prob(x: &Tensor<4>, mean: &Tensor<4>, std: &Tensor<1>) -> Tensor<1> {
    let [b, _, _, _] = x.dims();
    let std4 = std.clone().reshape([b, 1, 1, 1]);
    let zero = std.clone().equal_elem(0.0);
    let safe = std4.clone().mask_fill(std4.clone().equal_elem(0.0), 1.0);
    let half_log_2pi = (2.0 * std::f64::consts::PI).sqrt().ln();
    let diff = (x.clone() - mean.clone()).square();
    let density = diff.neg().div(safe.clone().square().mul_scalar(2.0)) - safe.log() - half_log_2pi;
    let per_row = density.flatten::<2>(1, 3).mean_dim(1).reshape([b]);
    per_row.mask_fill(zero, 0.0)
}

/// DDPO's DDIM step with η and its log-probability (docs/design.md §4c, ddpo-pytorch's
/// `ddim_step_with_logprob`), for ε-prediction models: from x_t at DDPM timestep `t` [B]
/// with the prediction ε̂, prev = t − T/N clamped to [0, T − 1],
/// x̂₀ = (x_t − √(1−ᾱ_t)·ε̂)/√ᾱ_t, s = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev),
/// μ = √ᾱ_prev·x̂₀ + √(1 − ᾱ_prev − s²)·ε̂, x' = μ + s·ξ (or `prev_sample` scored), and the
/// log-density of x' under N(μ, s²) averaged over (C,h,w). ᾱ from `alphas_cumprod` (f64,
/// the schedule's), the arithmetic in f32 as the reference runs it.
#[allow(clippy::too_many_arguments)]
pub fn ddim_step_logprob(
    sample: Tensor<4>,
    eps: Tensor<4>,
    noise: Option<Tensor<4>>,
    timesteps: &[i64],
    alphas_cumprod: &[f64],
    inference_steps: usize,
    eta: f64,
    prev_sample: Option<Tensor<4>>,
) -> SdeStep {
    let [b, _, _, _] = sample.dims();
    let device = sample.device();
    let total = alphas_cumprod.len() as i64;
    let step = total / inference_steps as i64;
    let at = |t: i64| alphas_cumprod[t.clamp(0, total - 1) as usize] as f32;
    let (mut a_t, mut a_prev) = (Vec::with_capacity(b), Vec::with_capacity(b));
    for &t in timesteps {
        a_t.push(at(t));
        a_prev.push(at(t - step));
    }
    let s: Vec<f32> = a_t
        .iter()
        .zip(&a_prev)
        .map(|(&at, &ap)| eta as f32 * ((1.0 - ap) / (1.0 - at)).sqrt() * (1.0 - at / ap).sqrt())
        .collect();
    let row = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [b]), (&device, DType::F32));
    let col = |v: &[f32], f: fn(f32) -> f32| row(v.iter().map(|x| f(*x)).collect()).reshape([b, 1, 1, 1]);
    let x0 = (sample - eps.clone() * col(&a_t, |a| (1.0 - a).sqrt())) / col(&a_t, f32::sqrt);
    let dir_coef: Vec<f32> = a_prev.iter().zip(&s).map(|(ap, s)| (1.0 - ap - s * s).max(0.0).sqrt()).collect();
    let mean = x0 * col(&a_prev, f32::sqrt) + eps * row(dir_coef).reshape([b, 1, 1, 1]);
    let std = row(s.clone());
    let prev_sample = match (prev_sample, noise) {
        (Some(x), _) => x,
        (None, Some(xi)) => mean.clone() + xi * std.clone().reshape([b, 1, 1, 1]),
        (None, None) => mean.clone(),
    };
    let log_prob = log_prob(&prev_sample, &mean, &std);
    SdeStep { prev_sample, mean, s: std.clone(), std, log_prob }
}
