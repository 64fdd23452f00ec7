//! DiffusionNFT's pass (docs/design.md §4c, `train_nft_sd3.py`): each sample's clean image
//! x₀ is re-noised with fresh noise at ⌊f·N⌋ of the sampling schedule's σ (a random
//! permutation per sample, as the official code draws them), x_σ = (1 − σ)·x₀ + σ·ε, and the
//! policy, the old policy and the reference predict the velocity there (no guidance); the
//! loss weighs the implicit positive and negative policies by r = clamp(A/adv_clip_max/2 +
//! 0.5, 0, 1). One update per batch, each σ's loss 1/⌊f·N⌋ of it.

use burn::tensor::{Tensor, TensorData};
use rand::seq::SliceRandom;

use super::learner::{Accumulator, Cast, Learner, PassContext, PassLog, batches};
use super::rollouts::{Rollouts, rows, select_prompts};
use super::{mix, purpose};
use crate::family::TrainDenoiser;
use crate::losses::online::nft::{nft_loss, reward_weight};
use crate::models::denoiser::{Conditioning, Denoiser};
use crate::sample::noise::gaussian;
use crate::sample::rollout::Stepper;
use crate::sample::validate::{Guided, Prompts};

/// The unguided conditioning of `p`'s rows (FLUX's embedded guidance on each).
fn conditioning(p: &Prompts) -> Conditioning {
    Guided::new(p, 1.0).conditioning().clone()
}

/// The parameters of [`crate::losses::online::OnlineMethod::Nft`] a pass uses.
#[derive(Debug, Clone, Copy)]
pub struct NftParams {
    pub beta: f64,
    pub ref_beta: f64,
    pub adv_clip_max: f64,
}

#[allow(clippy::too_many_arguments)]
pub fn pass<M: TrainDenoiser>(
    learner: &mut Learner<M>,
    old: &M,
    reference: Option<&M>,
    ro: &Rollouts,
    samples: &[usize],
    advantages: &[f64],
    p: NftParams,
    cx: &PassContext,
) -> PassLog {
    let config = cx.config;
    let Stepper::Flow { sigmas, .. } = &ro.trajectory.stepper else {
        unreachable!("NFT is refused for ε-models when the run starts")
    };
    let schedule = &sigmas[..sigmas.len() - 1];
    let steps = config.train_steps().min(schedule.len());
    let x0_all = ro.trajectory.sample();
    let [_, c, h, w] = x0_all.dims();
    let weight: std::collections::HashMap<usize, f64> =
        samples.iter().copied().zip(advantages.iter().map(|&a| reward_weight(a, p.adv_clip_max))).collect();
    // Each sample's σ order: a permutation of the schedule, drawn from its row and iteration.
    let order = |row: usize| {
        let mut o: Vec<usize> = (0..schedule.len()).collect();
        o.shuffle(&mut super::rng(cx.seed, &[cx.it as u64, purpose::TRAIN_NOISE, row as u64]));
        o
    };
    let mut log = PassLog::default();
    for epoch in 0..config.inner_epochs {
        for batch in batches(samples, cx.batch_size, cx.seed, cx.it, epoch) {
            let b = batch.len();
            let plain = conditioning(&select_prompts(&ro.prompts, &batch));
            let device = learner.device.clone();
            let x0 = rows(x0_all, &batch);
            let r: Vec<f32> = batch.iter().map(|i| weight[i] as f32).collect();
            let r = Tensor::<1>::from_data(TensorData::new(r, [b]), &device);
            let orders: Vec<Vec<usize>> = batch.iter().map(|&i| order(i)).collect();
            let mut acc = Accumulator::default();
            for j in 0..steps {
                let sigma: Vec<f32> = orders.iter().map(|o| schedule[o[j]]).collect();
                let seed = mix(cx.seed, &[cx.it as u64, purpose::TRAIN_NOISE, epoch as u64, j as u64]);
                let noise: Vec<f32> = batch.iter().flat_map(|&i| gaussian(mix(seed, &[i as u64]), c * h * w)).collect();
                let noise = Tensor::<4>::from_data(TensorData::new(noise, [b, c, h, w]), &x0.device());
                let s = Tensor::<1>::from_data(TensorData::new(sigma.clone(), [b]), &x0.device());
                let s4 = s.clone().reshape([b, 1, 1, 1]);
                let noisy = x0.clone() * s4.clone().neg().add_scalar(1.0) + noise * s4;
                let t = s.clone().mul_scalar(1000.0);
                let pred = learner.predict(noisy.clone(), t.clone(), &plain, cx.exec);
                let dtype = cx.exec.dtype;
                let v_old = Cast { model: old, dtype }.predict(noisy.clone(), t.clone(), &plain);
                let v_ref = reference
                    .filter(|_| p.ref_beta > 0.0)
                    .map(|m| Tensor::from_inner(Cast { model: m, dtype }.predict(noisy.clone(), t.clone(), &plain)));
                let loss = nft_loss(
                    pred.value.clone(),
                    Tensor::from_inner(v_old),
                    v_ref,
                    Tensor::from_inner(x0.clone()),
                    Tensor::from_inner(noisy),
                    Tensor::from_inner(s),
                    r.clone(),
                    p.beta,
                    p.ref_beta,
                );
                let share = 1.0 / steps as f64;
                learner.backward(loss.clone().mul_scalar(share), pred, vec![("nft_loss", loss)], &mut acc);
            }
            let (loss, metrics) = (acc.loss, acc.metrics.clone());
            let update = learner.update(acc, &cx.lr);
            log.record(loss, &metrics, update);
        }
    }
    log
}
