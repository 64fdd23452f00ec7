//! Online pairs (flow_grpo's online DPO, docs/design.md §4c): in each group the image with
//! the highest reward is chosen and the one with the lowest rejected (groups whose rewards
//! all tie give no pair), and the offline method trains on the pairs exactly as on a pairs
//! file (`train::step::forward_backward`: one timestep and noise shared by a pair), with
//! ⌊f·N⌋ draws of timestep and noise per pair summed into one update per batch.

use burn::tensor::{Tensor, TensorData};

use super::learner::{Accumulator, Learner, PassContext, PassLog, Tally, add_grads, batches};
use super::purpose;
use super::rollouts::{Rollouts, rows, select_prompts};
use crate::family::TrainDenoiser;
use crate::losses::Method;
use crate::objective::Objective;
use crate::sample::noise::standard_normal;
use crate::train::step::{PairBatch, Reference, forward_backward};

/// (chosen, rejected) rows of each group whose rewards do not all tie, among `kept` rows.
pub fn best_and_worst(group: &[i64], reward: &[f64], kept: &[usize]) -> Vec<(usize, usize)> {
    let mut groups: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for &i in kept {
        groups.entry(group[i]).or_default().push(i);
    }
    groups
        .values()
        .filter(|rows| rows.len() >= 2)
        .filter_map(|rows| {
            // The first of equal rewards wins each comparison: deterministic.
            let best = *rows.iter().reduce(|a, b| if reward[*b] > reward[*a] { b } else { a })?;
            let worst = *rows.iter().reduce(|a, b| if reward[*b] < reward[*a] { b } else { a })?;
            (reward[best] > reward[worst]).then_some((best, worst))
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
pub fn pass<M: TrainDenoiser>(
    learner: &mut Learner<M>,
    reference: Option<&M>,
    method: &Method,
    objective: &Objective,
    ro: &Rollouts,
    pairs: &[(usize, usize)],
    cx: &PassContext,
) -> PassLog {
    let draws = cx.config.train_steps();
    let x0 = ro.trajectory.sample();
    let [_, c, h, w] = x0.dims();
    let mut log = PassLog::default();
    let index: Vec<usize> = (0..pairs.len()).collect();
    for epoch in 0..cx.config.inner_epochs {
        for batch in batches(&index, cx.batch_size, cx.seed, cx.it, epoch) {
            let b = batch.len();
            let (w_rows, l_rows): (Vec<usize>, Vec<usize>) = batch.iter().map(|&k| pairs[k]).unzip();
            let prompts = select_prompts(&ro.prompts, &w_rows);
            let lift = |t: Tensor<4>| Tensor::from_inner(t);
            let (chosen, rejected) = (lift(rows(x0, &w_rows)), lift(rows(x0, &l_rows)));
            let device = chosen.device();
            let mut acc = Accumulator::default();
            for d in 0..draws {
                let mut timesteps = Vec::with_capacity(b);
                let mut noise = Vec::with_capacity(b * c * h * w);
                for &k in &batch {
                    let mut rng =
                        super::rng(cx.seed, &[cx.it as u64, purpose::TRAIN_NOISE, epoch as u64, d as u64, k as u64]);
                    timesteps.push(objective.draw_timestep(&mut rng));
                    noise.extend((0..c * h * w).map(|_| standard_normal(&mut rng)));
                }
                let batch = PairBatch {
                    chosen: chosen.clone(),
                    rejected: Some(rejected.clone()),
                    labels: None,
                    noise: Tensor::from_data(TensorData::new(noise, [b, c, h, w]), &device),
                    timesteps,
                    encoder_hidden_states: Tensor::from_inner(prompts.context.clone()),
                    text_embeds: Tensor::from_inner(prompts.text_embeds.clone()),
                    time_ids: prompts.time_ids.clone().map(Tensor::from_inner),
                    guidance: prompts
                        .embedded_guidance
                        .map(|g| Tensor::from_data(TensorData::new(vec![g; b], [b]), &device)),
                };
                let reference = match reference {
                    Some(r) if method.uses_reference() => Reference::Model(r),
                    _ => Reference::None,
                };
                let micro = forward_backward(&learner.policy, reference, method, &batch, objective, cx.exec);
                let share = 1.0 / draws as f64;
                add_grads(&mut acc, micro.grads.into_iter().map(|(name, g)| (name, g.mul_scalar(share))));
                acc.loss += micro.loss * share;
                let mut tally = Tally::default();
                micro.metrics.iter().for_each(|(k, v)| tally.add(k, *v));
                acc.metrics.merge(&tally);
            }
            let (loss, metrics) = (acc.loss, acc.metrics.clone());
            let update = learner.update(acc, &cx.lr);
            log.record(loss, &metrics, update);
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::best_and_worst;

    /// Per group: the highest reward is chosen, the lowest rejected; a group whose rewards
    /// all tie, or with fewer than two scored samples, gives no pair; dropped rows never pair.
    #[test]
    fn best_and_worst_of_each_group() {
        let group = [0, 0, 0, 1, 1, 2, 2, 3, 3];
        let reward = [0.5, 2.0, -1.0, 1.0, 1.0, 3.0, f64::NAN, 0.0, 4.0];
        let kept = [0, 1, 2, 3, 4, 5, 7, 8];
        assert_eq!(best_and_worst(&group, &reward, &kept), vec![(1, 2), (8, 7)]);
    }
}
