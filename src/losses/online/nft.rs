//! DiffusionNFT's loss (docs/design.md §4c): implicit positive and negative policies around
//! the old policy, v⁺ = β·v_θ + (1 − β)·v_old and v⁻ = (1 + β)·v_old − β·v_θ, each scored by
//! its x₀ error normalised by its own (stop-gradient) mean absolute error; rewards r in
//! [0, 1] weigh the two, and a small velocity penalty keeps θ near the reference:
//!   x̂₀^± = x_σ − σ·v^±, L^± = mean_CHW((x̂₀^± − x₀)²) / sg(max(mean_CHW|x̂₀^± − x₀|, 1e-5)),
//!   loss = 5·mean_b((r·L⁺ + (1 − r)·L⁻)/β) + ref_beta·mean_b mean_CHW((v_θ − v_ref)²).

use burn::tensor::Tensor;

/// DiffusionNFT's defaults: β 1.0, ref_beta 1e-4.
pub const BETA: f64 = 1.0;
pub const REF_BETA: f64 = 1e-4;
/// The old policy's decay schedule, d = min(0.001·iteration, 0.5) (DiffusionNFT's type 1).
pub const DECAY_RATE: f64 = 0.001;
pub const MAX_DECAY: f64 = 0.5;

/// The reward weight r = clamp(A/adv_clip_max/2 + 0.5, 0, 1) of an advantage A (A/10 + 0.5
/// at the default ±5).
pub fn reward_weight(advantage: f64, adv_clip_max: f64) -> f64 {
    (advantage / adv_clip_max / 2.0 + 0.5).clamp(0.0, 1.0)
}

/// Inputs [B,C,h,w]: the policy's, old policy's and reference's velocities at `noisy`
/// (x_σ), the clean sample `x0`; `sigma` and `reward` [B].
#[allow(clippy::too_many_arguments)]
pub fn nft_loss(
    model_pred: Tensor<4>,
    old_pred: Tensor<4>,
    ref_pred: Option<Tensor<4>>,
    x0: Tensor<4>,
    noisy: Tensor<4>,
    sigma: Tensor<1>,
    reward: Tensor<1>,
    beta: f64,
    ref_beta: f64,
) -> Tensor<1> {
    let [b, _, _, _] = model_pred.dims();
    let sigma4 = sigma.reshape([b, 1, 1, 1]);
    let positive = model_pred.clone().mul_scalar(beta) + old_pred.clone().mul_scalar(1.0 - beta);
    let negative = old_pred.mul_scalar(1.0 + beta) - model_pred.clone().mul_scalar(beta);
    let normalised = |v: Tensor<4>| {
        let err = noisy.clone() - v * sigma4.clone() - x0.clone();
        let sq = err.clone().square().flatten::<2>(1, 3).mean_dim(1).reshape([b]);
        let scale = err.abs().flatten::<2>(1, 3).mean_dim(1).reshape([b]).clamp_min(1e-5).detach();
        sq / scale
    };
    let (l_pos, l_neg) = (normalised(positive), normalised(negative));
    let weighted = reward.clone() * l_pos + reward.neg().add_scalar(1.0) * l_neg;
    let mut loss = weighted.div_scalar(beta).mean().mul_scalar(5.0);
    if let Some(r) = ref_pred.filter(|_| ref_beta > 0.0) {
        let penalty = (model_pred - r).square().flatten::<2>(1, 3).mean_dim(1).reshape([b]).mean();
        loss = loss + penalty.mul_scalar(ref_beta);
    }
    loss
}
