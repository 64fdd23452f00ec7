//! Flow-GRPO's loss (docs/design.md §4c): the PPO-clipped policy term on the ratio of the
//! sampler step's log-probabilities under the policy and the policy that sampled, plus a KL
//! term to the reference on the step means:
//!   ρ = exp(log_prob − old_log_prob), policy = mean_b max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)),
//!   kl = mean_b mean_CHW((μ_θ − μ_ref)²) / (2·s²), loss = policy + kl_beta·kl.
//! DDPO's loss is the policy term alone.

use burn::tensor::Tensor;

/// flow_grpo's defaults: `clip_range` 1e-4, `kl_beta` 0.04.
pub const CLIP_RANGE: f64 = 1e-4;
pub const KL_BETA: f64 = 0.04;

#[derive(Debug, Clone)]
pub struct GrpoLoss {
    pub loss: Tensor<1>,
    pub policy_loss: Tensor<1>,
    pub kl: Tensor<1>,
    /// The fraction of rows whose ratio left [1 − ε, 1 + ε] (a diagnostic).
    pub clip_fraction: Tensor<1>,
}

/// `means`: (μ_θ, μ_ref) [B,C,h,w] with `s` [B], when `kl_beta` > 0.
pub fn grpo_loss(
    log_prob: Tensor<1>,
    old_log_prob: Tensor<1>,
    advantages: Tensor<1>,
    clip_range: f64,
    kl_beta: f64,
    means: Option<(Tensor<4>, Tensor<4>, Tensor<1>)>,
) -> GrpoLoss {
    let ratio = (log_prob - old_log_prob).exp();
    let unclipped = advantages.clone().neg() * ratio.clone();
    let clipped = advantages.neg() * ratio.clone().clamp(1.0 - clip_range, 1.0 + clip_range);
    let policy_loss = unclipped.max_pair(clipped).mean();
    let outside = ratio.clone().sub_scalar(1.0).abs().greater_elem(clip_range).float().mean();
    let kl = match means {
        Some((mean, ref_mean, s)) if kl_beta > 0.0 => {
            let [b, _, _, _] = mean.dims();
            let sq = (mean - ref_mean).square().flatten::<2>(1, 3).mean_dim(1).reshape([b]);
            (sq / s.square().mul_scalar(2.0)).mean()
        }
        _ => policy_loss.zeros_like(),
    };
    let loss = policy_loss.clone() + kl.clone().mul_scalar(kl_beta);
    GrpoLoss { loss, policy_loss, kl, clip_fraction: outside }
}
