//! Flow-GRPO's pass (docs/design.md §4c, flow_grpo's `train_sd3.py`), and DDPO's (its step
//! the DDIM step with η, no KL): for each batch of samples with a non-zero advantage, the
//! policy re-scores the trajectory's transitions at the first ⌊f·N⌋ sampling steps (with the
//! sampling's guidance), each step's clipped-ratio loss plus the KL of its step mean to the
//! reference's, summed over the steps (each 1/⌊f·N⌋) into one update.

use burn::tensor::{Tensor, TensorData};

use super::learner::{Accumulator, Cast, Learner, PassContext, PassLog, batches};
use super::rollouts::{Rollouts, rows, select_prompts};
use crate::family::TrainDenoiser;
use crate::losses::online::grpo::grpo_loss;
use crate::sample::validate::Guided;

/// `samples`: the rows to train on, `advantages` theirs (A ≠ 0: a zero advantage contributes
/// only to the KL term, and flow_grpo filters those samples out).
#[allow(clippy::too_many_arguments)]
pub fn pass<M: TrainDenoiser>(
    learner: &mut Learner<M>,
    reference: Option<&M>,
    ro: &Rollouts,
    samples: &[usize],
    advantages: &[f64],
    clip_range: f64,
    kl_beta: f64,
    cx: &PassContext,
) -> PassLog {
    let config = cx.config;
    let stepper = &ro.trajectory.stepper;
    let steps = config.train_steps().min(stepper.steps());
    let mut log = PassLog::default();
    let advantage_of: std::collections::HashMap<usize, f64> =
        samples.iter().copied().zip(advantages.iter().copied()).collect();
    let trained: Vec<usize> = samples.iter().copied().filter(|r| advantage_of[r] != 0.0).collect();
    for epoch in 0..config.inner_epochs {
        for batch in batches(&trained, cx.batch_size, cx.seed, cx.it, epoch) {
            let b = batch.len();
            let plain = select_prompts(&ro.prompts, &batch);
            let guided = Guided::new(&plain, config.guidance);
            let device = learner.device.clone();
            let adv: Vec<f32> = batch.iter().map(|r| advantage_of[r] as f32).collect();
            let adv = Tensor::<1>::from_data(TensorData::new(adv, [b]), &device);
            let mut acc = Accumulator::default();
            for j in 0..steps {
                let x = rows(&ro.trajectory.states[j], &batch);
                let prev = rows(&ro.trajectory.states[j + 1], &batch);
                let old = Tensor::from_inner(rows(&ro.trajectory.log_probs[j], &batch));
                let (input, t) = guided.model_inputs(x.clone(), stepper.model_time(j));
                let pred = learner.predict(input, t, guided.conditioning(), cx.exec);
                let v = guided.combine(pred.value.clone());
                let lifted = |t: &Tensor<4>| Tensor::from_inner(t.clone());
                let step = stepper.step(j, lifted(&x), v, None, Some(lifted(&prev)));
                let means = reference.filter(|_| kl_beta > 0.0).map(|r| {
                    let v_ref =
                        guided.predict(&Cast { model: r, dtype: cx.exec.dtype }, x.clone(), stepper.model_time(j));
                    let ref_step = stepper.step(j, x, v_ref, None, Some(prev));
                    (step.mean.clone(), Tensor::from_inner(ref_step.mean), step.s.clone())
                });
                let ratio = (step.log_prob.clone() - old.clone()).exp().mean();
                let out = grpo_loss(step.log_prob, old, adv.clone(), clip_range, kl_beta, means);
                let share = 1.0 / steps as f64;
                learner.backward(
                    out.loss.mul_scalar(share),
                    pred,
                    vec![
                        ("policy_loss", out.policy_loss),
                        ("kl", out.kl),
                        ("clip_fraction", out.clip_fraction),
                        ("ratio", ratio),
                    ],
                    &mut acc,
                );
            }
            let (loss, metrics) = (acc.loss, acc.metrics.clone());
            let update = learner.update(acc, &cx.lr);
            log.record(loss, &metrics, update);
        }
    }
    log
}
