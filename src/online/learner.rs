//! The policy being trained and its optimizer: gradients of a batch's losses are summed
//! (each loss already divided by its share), then one clipped update, skipped when the loss
//! or the gradient is not finite, as offline steps do (`train::step::apply_update`).

use burn::tensor::{DType, Tensor};

use crate::family::TrainDenoiser;
use crate::models::named::param_grads;
use crate::train::optim::{GradMap, Optimizer};
use crate::train::step::{Update, apply_update};

pub struct Learner<M> {
    /// The policy, on the autodiff device.
    pub policy: M,
    pub optimizer: Optimizer,
    pub max_grad_norm: f64,
}

/// A batch in progress: summed gradients, summed loss, and metric sums.
#[derive(Default)]
pub struct Accumulator {
    pub grads: GradMap,
    pub loss: f64,
    pub metrics: Tally,
}

impl<M: TrainDenoiser> Learner<M> {
    /// Backward of `loss` (a scalar on the autodiff device) into `acc`; the loss's value is
    /// read with `extra`'s metric scalars in one device read.
    pub fn backward(&self, loss: Tensor<1>, extra: Vec<(&'static str, Tensor<1>)>, acc: &mut Accumulator) {
        let mut scalars = vec![loss.clone().inner().cast(DType::F32)];
        scalars.extend(extra.iter().map(|(_, t)| t.clone().inner().cast(DType::F32)));
        let grads = loss.backward();
        for (name, g, _) in param_grads(&self.policy, &grads) {
            let Some(g) = g else { continue };
            let total = match acc.grads.remove(&name) {
                Some(sum) => sum + g,
                None => g,
            };
            acc.grads.insert(name, total);
        }
        let values: Vec<f32> = Tensor::cat(scalars, 0)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 scalars after the cast");
        acc.loss += values[0] as f64;
        for ((k, _), v) in extra.iter().zip(&values[1..]) {
            acc.metrics.add(k, *v as f64);
        }
    }

    /// One update from the accumulated gradients, at the schedule's rate for this update.
    pub fn update(&mut self, acc: Accumulator, plan: &LrPlan) -> Update {
        let lr = plan.at(self.optimizer.step as usize);
        let policy = self.policy.clone();
        let (policy, update) = apply_update(policy, &acc.grads, &mut self.optimizer, lr, self.max_grad_norm, acc.loss);
        self.policy = policy;
        update
    }
}

/// Sums and counts of named metrics; their means go to the metrics line.
#[derive(Debug, Default, Clone)]
pub struct Tally(Vec<(String, f64, usize)>);

impl Tally {
    pub fn add(&mut self, name: &str, value: f64) {
        match self.0.iter_mut().find(|(n, _, _)| n == name) {
            Some((_, s, c)) => (*s, *c) = (*s + value, *c + 1),
            None => self.0.push((name.to_string(), value, 1)),
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        for (name, s, c) in &other.0 {
            match self.0.iter_mut().find(|(n, _, _)| n == name) {
                Some((_, s0, c0)) => (*s0, *c0) = (*s0 + s, *c0 + c),
                None => self.0.push((name.clone(), *s, *c)),
            }
        }
    }

    pub fn means(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(n, s, c)| (n.as_str(), s / *c as f64))
    }
}

/// A denoiser called with its activations in `dtype` (bf16/f16 mixed precision: the latents
/// and text states are cast on the way in, the prediction back to f32), as the offline step
/// calls it (`train::step`).
pub struct Cast<'a, M> {
    pub model: &'a M,
    pub dtype: DType,
}

impl<M: crate::models::denoiser::Denoiser> crate::models::denoiser::Denoiser for Cast<'_, M> {
    fn predict(
        &self,
        noisy: Tensor<4>,
        timestep: Tensor<1>,
        cond: &crate::models::denoiser::Conditioning,
    ) -> Tensor<4> {
        let cond = crate::models::denoiser::Conditioning {
            context: cond.context.clone().cast(self.dtype),
            pooled: cond.pooled.clone().cast(self.dtype),
            time_ids: cond.time_ids.clone(),
            guidance: cond.guidance.clone(),
        };
        self.model.predict(noisy.cast(self.dtype), timestep, &cond).cast(DType::F32)
    }
}

/// What a method's pass over an iteration's samples did.
#[derive(Debug, Default)]
pub struct PassLog {
    pub updates: usize,
    /// Updates skipped for a non-finite loss or gradient.
    pub skipped: usize,
    pub loss_sum: f64,
    pub grad_norm_sum: f64,
    pub metrics: Tally,
}

impl PassLog {
    pub fn record(&mut self, acc_loss: f64, acc_metrics: &Tally, update: Update) {
        self.loss_sum += acc_loss;
        self.metrics.merge(acc_metrics);
        if update.applied {
            self.updates += 1;
            self.grad_norm_sum += update.grad_norm;
        } else {
            self.skipped += 1;
        }
    }
}

/// The shuffled batches of `rows` for inner epoch `epoch` of iteration `it`.
pub fn batches(rows: &[usize], batch_size: usize, seed: u64, it: usize, epoch: usize) -> Vec<Vec<usize>> {
    use rand::seq::SliceRandom;
    let mut order = rows.to_vec();
    order.shuffle(&mut super::rng(seed, &[it as u64, super::purpose::SHUFFLE, epoch as u64]));
    order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

/// Everything a pass reads besides the learner and the iteration's data.
pub struct PassContext<'a> {
    pub config: &'a crate::train::online_config::OnlineConfig,
    pub seed: u64,
    pub it: usize,
    pub batch_size: usize,
    pub lr: LrPlan,
    pub compute: DType,
}

/// The learning rate of each update: the run's schedule over its optimizer updates
/// (`warmup_steps` counts updates, as offline), the total estimated from the iterations.
#[derive(Debug, Clone, Copy)]
pub struct LrPlan {
    pub base: f64,
    pub schedule: crate::train::lr::LrSchedule,
    pub total: usize,
    pub warmup: usize,
}

impl LrPlan {
    pub fn at(&self, update: usize) -> f64 {
        self.base * crate::train::lr::multiplier(self.schedule, update, self.total, self.warmup)
    }
}
