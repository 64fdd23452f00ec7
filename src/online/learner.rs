//! The policy being trained and its optimizer: gradients of a batch's losses are summed
//! (each loss already divided by its share), then one clipped update, skipped when the loss
//! or the gradient is not finite, as offline steps do (`train::step::apply_update`).

use burn::tensor::{DType, Tensor};

use crate::family::TrainDenoiser;
use crate::models::denoiser::Conditioning;
use crate::models::named::param_grads;
use crate::train::optim::{GradMap, Optimizer};
use crate::train::step::{Execution, Update, apply_update};

pub struct Learner<M> {
    /// The policy, on the autodiff device.
    pub policy: M,
    /// The policy's (autodiff) device.
    pub device: burn::tensor::Device,
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

/// The policy's prediction in a pass: through the autodiff graph, or with gradient
/// checkpointing a leaf whose gradient is afterwards run back through the blocks
/// (`TrainDenoiser::checkpointed_backward`), as the offline step does.
pub struct Prediction<M: TrainDenoiser> {
    /// [R, C, h, w] in f32 on the autodiff device.
    pub value: Tensor<4>,
    replay: Option<Replay<M>>,
}

struct Replay<M: TrainDenoiser> {
    tape: M::Tape,
    noisy: Tensor<4>,
    t: Tensor<1>,
    cond: Conditioning,
    dtype: DType,
}

/// `cond` (plain) on the autodiff device, text in `dtype`.
fn lift_conditioning(cond: &Conditioning, dtype: DType) -> Conditioning {
    Conditioning {
        context: Tensor::from_inner(cond.context.clone()).cast(dtype),
        pooled: Tensor::from_inner(cond.pooled.clone()).cast(dtype),
        time_ids: cond.time_ids.clone().map(Tensor::from_inner),
        guidance: cond.guidance.clone().map(Tensor::from_inner),
    }
}

impl<M: TrainDenoiser> Learner<M> {
    /// The policy's prediction for `noisy` [R, C, h, w] at model times `t` [R] with `cond`
    /// (all on the plain device), activations in `exec.dtype`.
    pub fn predict(&self, noisy: Tensor<4>, t: Tensor<1>, cond: &Conditioning, exec: Execution) -> Prediction<M> {
        let dtype = exec.dtype;
        let cond = lift_conditioning(cond, dtype);
        let (noisy, t) = (Tensor::from_inner(noisy).cast(dtype), Tensor::from_inner(t));
        if !exec.checkpointing {
            let value = self.policy.predict(noisy, t, &cond).cast(DType::F32);
            return Prediction { value, replay: None };
        }
        let (pred, tape) = self.policy.checkpointed_forward(noisy.clone(), t.clone(), &cond);
        let value = Tensor::from_inner(pred.cast(DType::F32)).require_grad();
        Prediction { value, replay: Some(Replay { tape, noisy, t, cond, dtype }) }
    }

    /// Backward of `loss` (a scalar on the autodiff device, computed from `pred`) into `acc`;
    /// the loss's value is read with `extra`'s metric scalars in one device read.
    pub fn backward(
        &self,
        loss: Tensor<1>,
        pred: Prediction<M>,
        extra: Vec<(&'static str, Tensor<1>)>,
        acc: &mut Accumulator,
    ) {
        let mut scalars = vec![loss.clone().inner().cast(DType::F32)];
        scalars.extend(extra.iter().map(|(_, t)| t.clone().inner().cast(DType::F32)));
        let values: Vec<f32> = Tensor::cat(scalars, 0)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 scalars after the cast");
        let grads = loss.backward();
        let named: Vec<(String, Tensor<1>)> = match pred.replay {
            Some(r) => {
                let g = pred.value.grad(&grads).expect("the prediction is a tracked leaf").cast(r.dtype);
                drop(grads);
                self.policy.checkpointed_backward(r.tape, g, r.noisy, r.t, &r.cond).into_iter().collect()
            }
            None => param_grads(&self.policy, &grads).into_iter().filter_map(|(n, g, _)| g.map(|g| (n, g))).collect(),
        };
        add_grads(acc, named);
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

/// Adds named gradients to the accumulated sums.
pub fn add_grads(acc: &mut Accumulator, grads: impl IntoIterator<Item = (String, Tensor<1>)>) {
    for (name, g) in grads {
        let total = match acc.grads.remove(&name) {
            Some(sum) => sum + g,
            None => g,
        };
        acc.grads.insert(name, total);
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
    /// The activations' dtype and gradient checkpointing.
    pub exec: Execution,
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
