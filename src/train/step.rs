//! The preference training step, readable top to bottom.

use burn::tensor::{DType, Tensor};

use crate::family::TrainDenoiser;
use crate::family::{Conditioning, Denoiser};
use crate::losses::{Errors, Layout, LossInput, Method, loss_dtype};
use crate::models::named::param_grads;
use crate::models::unet::UNet2DConditionModel;
use crate::objective::Objective;
use crate::train::grad_clip::{clip_coefficient, global_grad_norm};
use crate::train::optim::{GradMap, Optimizer, to_autodiff};

/// One batch of preference pairs (or of unpaired labelled images), on the autodiff device.
/// Conditioning is per pair.
#[derive(Debug, Clone)]
pub struct PairBatch {
    /// [B,4,h,w] latents of the chosen images (already scaled); unpaired: the images.
    pub chosen: Tensor<4>,
    /// [B,4,h,w] latents of the rejected images (None: unpaired rows).
    pub rejected: Option<Tensor<4>>,
    /// Unpaired rows: whether each image is desirable.
    pub labels: Option<Vec<bool>>,
    /// [B,4,h,w] noise, shared by both images of a pair.
    pub noise: Tensor<4>,
    /// One timestep per pair, shared by both images.
    pub timesteps: Vec<i64>,
    pub encoder_hidden_states: Tensor<3>,
    /// Pooled text: SDXL's `text_embeds`, SD3's `pooled_projections`.
    pub text_embeds: Tensor<2>,
    /// SDXL's micro-conditioning [B, 6]; None for flow families.
    pub time_ids: Option<Tensor<2>>,
    /// FLUX.1 [dev]'s embedded guidance scale per pair [B] (`guidance` in the config).
    pub guidance: Option<Tensor<1>>,
}

#[derive(Debug, Clone)]
pub struct StepStats {
    pub loss: f64,
    pub metrics: Vec<(String, f64)>,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
}

/// The UNet inputs for a batch: `[chosen; rejected]` rows (chosen only when the method
/// does not use rejected images), conditioning repeated for both halves.
struct Inputs {
    noisy: Tensor<4>,
    /// The objective's timestep indices (losses read them), and the time the model is given.
    timesteps: Vec<i64>,
    model_t: Tensor<1>,
    target: Tensor<4>,
    context: Tensor<3>,
    pooled: Tensor<2>,
    time_ids: Option<Tensor<2>>,
    guidance: Option<Tensor<1>>,
}

fn inputs(batch: &PairBatch, objective: &Objective, with_rejected: bool) -> Inputs {
    let device = batch.chosen.device();
    let noisy_w = objective.noisy(batch.chosen.clone(), batch.noise.clone(), &batch.timesteps);
    let target_w = objective.target(batch.chosen.clone(), batch.noise.clone());
    let Some(rejected) = batch.rejected.clone().filter(|_| with_rejected) else {
        return Inputs {
            noisy: noisy_w,
            model_t: objective.model_timesteps(&batch.timesteps, &device),
            timesteps: batch.timesteps.clone(),
            target: target_w,
            context: batch.encoder_hidden_states.clone(),
            pooled: batch.text_embeds.clone(),
            time_ids: batch.time_ids.clone(),
            guidance: batch.guidance.clone(),
        };
    };
    let noisy_l = objective.noisy(rejected.clone(), batch.noise.clone(), &batch.timesteps);
    let target_l = objective.target(rejected, batch.noise.clone());
    let timesteps = [batch.timesteps.as_slice(), &batch.timesteps].concat();
    Inputs {
        noisy: Tensor::cat(vec![noisy_w, noisy_l], 0),
        model_t: objective.model_timesteps(&timesteps, &device),
        timesteps,
        target: Tensor::cat(vec![target_w, target_l], 0),
        context: Tensor::cat(vec![batch.encoder_hidden_states.clone(); 2], 0),
        pooled: Tensor::cat(vec![batch.text_embeds.clone(); 2], 0),
        time_ids: batch.time_ids.clone().map(|t| Tensor::cat(vec![t; 2], 0)),
        guidance: batch.guidance.clone().map(|g| Tensor::cat(vec![g; 2], 0)),
    }
}

/// The denoiser's prediction with activations in `dtype` (bf16/f16 mixed precision:
/// trained parameters stay f32 and are cast where they are used), returned in f32.
fn predict(model: &impl Denoiser, x: &Inputs, dtype: DType) -> Tensor<4> {
    model.predict(x.noisy.clone().cast(dtype), x.model_t.clone(), &conditioning(x, dtype)).cast(DType::F32)
}

/// The conditioning the denoiser is called with, text states and pooled text in `dtype`
/// (SDXL's time ids stay f32).
fn conditioning(x: &Inputs, dtype: DType) -> Conditioning {
    Conditioning {
        context: x.context.clone().cast(dtype),
        pooled: x.pooled.clone().cast(dtype),
        time_ids: x.time_ids.clone(),
        guidance: x.guidance.clone(),
    }
}

/// [`predict`] through the block-checkpointed forward pass: the prediction (in f32) is a
/// tracked leaf whose gradient the loss gives, and the tape its backward pass needs.
fn predict_checkpointed<M: TrainDenoiser>(model: &M, x: &Inputs, dtype: DType) -> (Tensor<4>, M::Tape) {
    let (pred, tape) =
        model.checkpointed_forward(x.noisy.clone().cast(dtype), x.model_t.clone(), &conditioning(x, dtype));
    (Tensor::from_inner(pred.cast(DType::F32)).require_grad(), tape)
}

/// Per-pair errors of `unet` on a batch's chosen and rejected images, in f32 (evaluation:
/// call it with a model on a plain device, no graph is recorded).
pub fn pair_errors(unet: &impl Denoiser, batch: &PairBatch, objective: &Objective) -> Errors {
    pair_errors_in(unet, batch, objective, DType::F32, true)
}

/// [`pair_errors`] with activations in `dtype`, chosen only unless `with_rejected` (and the
/// batch has rejected images).
pub fn pair_errors_in(
    unet: &impl Denoiser,
    batch: &PairBatch,
    objective: &Objective,
    dtype: DType,
    with_rejected: bool,
) -> Errors {
    let with_rejected = with_rejected && batch.rejected.is_some();
    let x = inputs(batch, objective, with_rejected);
    Errors::from_prediction(predict(unet, &x, dtype), x.target.clone(), with_rejected)
}

/// What a method that needs a reference compares against.
pub enum Reference<'a, M = UNet2DConditionModel> {
    /// No reference (reference-free methods).
    None,
    /// The frozen model, run on the inner (non-autodiff) device.
    Model(&'a M),
    /// Its per-pair errors, computed before training (`reference_cache`), on the inner device.
    Errors(Box<Errors>),
}

impl<'a, M> From<Option<&'a M>> for Reference<'a, M> {
    fn from(model: Option<&'a M>) -> Self {
        model.map_or(Reference::None, Reference::Model)
    }
}

/// Loss and metrics of one micro-batch, and the gradients of the loss.
pub struct MicroStep {
    pub loss: f64,
    pub metrics: Vec<(String, f64)>,
    pub grads: GradMap,
}

/// How a step computes: the activations' dtype, and whether the UNet's backward pass
/// recomputes each block from its saved input (block-level gradient checkpointing,
/// `models::unet::checkpoint`) instead of keeping every activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execution {
    pub dtype: DType,
    pub checkpointing: bool,
}

impl From<DType> for Execution {
    fn from(dtype: DType) -> Self {
        Self { dtype, checkpointing: false }
    }
}

/// The points of a step at which [`forward_backward_probed`] calls its probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The loss is computed; the graph holds every saved activation.
    Forward,
    /// The gradients are out of the graph (the graph is freed).
    Backward,
}

/// Forward and backward of one micro-batch.
///
/// `reference` is the frozen model (or its errors) for methods that need one; it runs on the
/// inner (non-autodiff) device, so no graph is recorded for it.
pub fn forward_backward<'a, M: TrainDenoiser + 'a>(
    unet: &M,
    reference: impl Into<Reference<'a, M>>,
    method: &Method,
    batch: &PairBatch,
    objective: &Objective,
    exec: impl Into<Execution>,
) -> MicroStep {
    forward_backward_probed(unet, reference, method, batch, objective, exec.into(), &mut |_| {})
}

/// [`forward_backward`], calling `probe` after the forward pass and after the backward one
/// (`mapo bench train-step` reads the memory of each phase there).
pub fn forward_backward_probed<'a, M: TrainDenoiser + 'a>(
    unet: &M,
    reference: impl Into<Reference<'a, M>>,
    method: &Method,
    batch: &PairBatch,
    objective: &Objective,
    exec: Execution,
    probe: &mut dyn FnMut(Phase),
) -> MicroStep {
    let compute = exec.dtype;
    let needs = method.needs;
    // Unpaired rows are all there is; the training loop refuses them for pair methods.
    let layout = match &batch.labels {
        Some(labels) => Layout::Unpaired(labels.clone()),
        None => needs.pair_layout(),
    };
    let x = inputs(batch, objective, layout == Layout::Pairs);
    let dtype = loss_dtype(&x.noisy.device());
    let lift = |t: Tensor<1>| to_autodiff(t, x.noisy.gradient_checkpointing_strategy());

    let (pred, tape) = if exec.checkpointing {
        let (pred, tape) = predict_checkpointed(unet, &x, compute);
        (pred, Some(tape))
    } else {
        (predict(unet, &x, compute), None)
    };
    let mut input =
        LossInput::new(pred.clone(), x.target.clone(), layout, x.timesteps.clone(), needs.predictions, dtype);
    if needs.reference {
        input = match reference.into() {
            Reference::Errors(e) => {
                let e = *e;
                let rows = match e.rejected {
                    Some(r) if input.layout == Layout::Pairs => Tensor::cat(vec![e.chosen, r], 0),
                    _ => e.chosen,
                };
                input.with_reference_errors(lift(rows))
            }
            Reference::Model(m) => {
                let plain = Inputs {
                    noisy: x.noisy.clone().inner(),
                    timesteps: x.timesteps.clone(),
                    model_t: x.model_t.clone().inner(),
                    target: x.target.clone().inner(),
                    context: x.context.clone().inner(),
                    pooled: x.pooled.clone().inner(),
                    time_ids: x.time_ids.clone().map(|t| t.inner()),
                    guidance: x.guidance.clone().map(|g| g.inner()),
                };
                let ref_pred = to_autodiff(predict(m, &plain, compute), x.noisy.gradient_checkpointing_strategy());
                input.with_reference_prediction(ref_pred, x.target.clone(), dtype)
            }
            Reference::None => panic!("method {} needs a reference model", method.name),
        };
    }

    let out = method.compute(&input);
    probe(Phase::Forward);
    let backward = out.loss.backward();
    let grads = match tape {
        // The loss's gradient of the prediction, then the UNet's backward unit by unit.
        Some(tape) => {
            let g = pred.grad(&backward).expect("the prediction is a tracked leaf").cast(compute);
            drop(backward);
            let cond = conditioning(&x, compute);
            unet.checkpointed_backward(tape, g, x.noisy.cast(compute), x.model_t, &cond)
        }
        None => param_grads(unet, &backward).into_iter().filter_map(|(name, g, _)| g.map(|g| (name, g))).collect(),
    };
    probe(Phase::Backward);
    // One device→host read for the loss and every metric: each read is a sync on a GPU.
    let mut scalars = vec![out.loss.inner().cast(DType::F32)];
    scalars.extend(out.metrics.iter().map(|(_, v)| v.clone().inner().cast(DType::F32)));
    let values: Vec<f32> =
        Tensor::cat(scalars, 0).into_data().convert::<f32>().try_to_vec().expect("f32 scalars after the cast");
    MicroStep {
        loss: values[0] as f64,
        metrics: out.metrics.iter().zip(&values[1..]).map(|((k, _), v)| (k.to_string(), *v as f64)).collect(),
        grads,
    }
}

/// What an update did.
#[derive(Debug, Clone, Copy)]
pub struct Update {
    /// The global gradient norm before clipping (NaN when the loss was not finite, and
    /// possibly infinite or NaN when the update was skipped).
    pub grad_norm: f64,
    /// False: the loss or the gradient norm was not finite and the weights are unchanged.
    pub applied: bool,
}

/// Global gradient-norm clipping and one optimizer step, skipped (weights and optimizer
/// state unchanged) when the loss or the gradient norm is not finite. The one update of
/// `mapo train`, `forward train-step` and `bench train-step`.
pub fn apply_update<M: TrainDenoiser>(
    unet: M,
    grads: &GradMap,
    optimizer: &mut Optimizer,
    lr: f64,
    max_grad_norm: f64,
    loss: f64,
) -> (M, Update) {
    let grad_norm = if loss.is_finite() { global_grad_norm(grads) } else { f64::NAN };
    if !grad_norm.is_finite() {
        return (unet, Update { grad_norm, applied: false });
    }
    (optimizer.step(unet, grads, clip_coefficient(grad_norm, max_grad_norm), lr), Update { grad_norm, applied: true })
}

/// Whether every parameter that has a gradient (the ones an update touched) is finite: one
/// fused reduction (x·0 is NaN exactly when x is not finite) and one device read.
pub fn updated_params_finite(unet: &impl TrainDenoiser, grads: &GradMap) -> bool {
    let mut parts = Vec::new();
    crate::models::named::for_each_param(unet, |name, t, _| {
        if grads.contains_key(&name) {
            parts.push(t.cast(DType::F32).mul_scalar(0.0).sum());
        }
    });
    parts.is_empty() || Tensor::cat(parts, 0).sum().into_scalar::<f32>().is_finite()
}

/// Forward, loss, backward, global clipping and one optimizer step on one batch.
#[allow(clippy::too_many_arguments)]
pub fn train_step<M: TrainDenoiser>(
    unet: M,
    reference: Option<&M>,
    method: &Method,
    batch: &PairBatch,
    objective: &Objective,
    optimizer: &mut Optimizer,
    lr: f64,
    max_grad_norm: f64,
    exec: impl Into<Execution>,
) -> (M, StepStats) {
    let micro = forward_backward(&unet, reference, method, batch, objective, exec);
    let (unet, update) = apply_update(unet, &micro.grads, optimizer, lr, max_grad_norm, micro.loss);
    (unet, StepStats { loss: micro.loss, metrics: micro.metrics, grad_norm: update.grad_norm })
}
