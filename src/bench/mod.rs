//! `mapo bench`: training-step and sampling speed and memory, printed as JSON lines so
//! that runs on different backends (and the PyTorch baseline in benches/torch/) compare.

pub mod data;
pub mod max_batch;
pub mod online;
pub mod score;

use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Tensor, TensorData};
use serde_json::json;

use crate::device::select;
use crate::family::TrainDenoiser;
use crate::losses::{Params, build};
use crate::models::attention::{DEFAULT_BLOCK_ELEMENTS, set_block_elements, set_training_attention};
use crate::models::flux::{FluxTransformer2DModel, FluxTransformerConfig};
use crate::models::lora::LoraConfig;
use crate::models::sd3::{SD3Transformer2DModel, SD3TransformerConfig};
use crate::models::unet::{UNet2DConditionModel, UNetConfig};
use crate::models::weights::Weights;
use crate::objective::{FlowConfig, FlowMatching, Objective};
use crate::sample::euler::EulerSchedule;
use crate::sample::noise::gaussian;
use crate::sample::schedule::NoiseSchedule;
use crate::sample::validate::{Prompts, sample_latents};
use crate::train::optim::{Optimizer, OptimizerConfig};
use crate::train::setup::method_params;
use crate::train::step::{
    Execution, PairBatch, Phase, Reference, apply_update, forward_backward_probed, pair_errors_in,
    updated_params_finite,
};
use crate::util::peak_rss;

/// Built-in configs: `tiny` (the test fixtures' UNet) and `sdxl` (the real one); a
/// `config.json`-style file (e.g. `benches/scale/mid_unet.json`) or a diffusers folder.
pub fn unet_config(model: &str) -> Result<(UNetConfig, serde_json::Value)> {
    let text = match model {
        "tiny" => include_str!("../models/presets/tiny_unet.json").to_string(),
        "sdxl" => include_str!("../models/presets/sdxl_unet.json").to_string(),
        file if file.ends_with(".json") => std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?,
        dir => {
            let path = crate::models::folder::component_dir(std::path::Path::new(dir), "unet")?.join("config.json");
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?
        }
    };
    let raw: serde_json::Value = serde_json::from_str(&text)?;
    Ok((serde_json::from_value(raw.clone())?, raw))
}

#[derive(clap::Args, Debug)]
pub struct TrainBench {
    #[arg(long, default_value = "mapo")]
    pub method: String,
    /// tiny, sdxl, a UNet config.json file, or a diffusers folder (its unet/config.json);
    /// or an SD3 transformer: tiny-sd3, sd3m, sd35m, sd35l, or its config.json (flow objective,
    /// 77 + 256 text tokens); or a FLUX.1 transformer: tiny-flux, flux-dev, flux-schnell, or
    /// its config.json (flow objective, 512 T5 tokens, embedded guidance 3.5).
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Image resolution (latents are resolution/8).
    #[arg(long, default_value_t = 64)]
    pub resolution: usize,
    /// Pairs per step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Train LoRA adapters of this rank instead of the full UNet.
    #[arg(long)]
    pub lora: Option<usize>,
    /// Gradient checkpointing (the config's `gradient_checkpointing`).
    #[arg(long, alias = "gradient-checkpointing")]
    pub grad_ckpt: bool,
    /// Training attention: `efficient` (blocked, own backward) or `naive` (Burn's
    /// materialised softmax under autodiff, the reference path).
    #[arg(long, default_value = "efficient", value_parser = ["efficient", "naive"])]
    pub attention: String,
    /// Score elements one block of the efficient attention may hold (default 2²⁴).
    #[arg(long)]
    pub attention_block: Option<usize>,
    /// DPO-type methods: the reference's errors computed once before the timed steps (the
    /// config's `reference_cache`), so no step runs the reference model.
    #[arg(long)]
    pub reference_cache: bool,
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
}

fn tensor<const D: usize>(seed: u64, shape: [usize; D], device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(gaussian(seed, n), shape), device)
}

fn stats(times: &mut [f64]) -> (f64, f64, f64) {
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    (times[times.len() / 2], times[0], times[times.len() - 1])
}

/// The SD3 transformer configs `--model` names: `tiny-sd3` (the test fixtures' SD3.5),
/// `sd3m`, `sd35m`, `sd35l` (the real ones, assets/sd3/); None for a UNet name.
fn sd3_config(model: &str) -> Result<Option<SD3TransformerConfig>> {
    let text = match model {
        "tiny-sd3" => include_str!("../models/presets/tiny_sd3_transformer.json").to_string(),
        "sd3m" => include_str!("../../assets/sd3/sd3_medium_transformer.json").to_string(),
        "sd35m" => include_str!("../../assets/sd3/sd35_medium_transformer.json").to_string(),
        "sd35l" => include_str!("../../assets/sd3/sd35_large_transformer.json").to_string(),
        file if file.ends_with(".json") => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
            let raw: serde_json::Value = serde_json::from_str(&text)?;
            if raw["_class_name"] != "SD3Transformer2DModel" {
                return Ok(None);
            }
            text
        }
        _ => return Ok(None),
    };
    Ok(Some(serde_json::from_str(&text)?))
}

/// The FLUX transformer configs `--model` names: `tiny-flux` (the test fixtures' [dev]),
/// `flux-dev`, `flux-schnell` (the real ones, assets/flux/), or a config.json of
/// FluxTransformer2DModel; None otherwise.
fn flux_config(model: &str) -> Result<Option<FluxTransformerConfig>> {
    let text = match model {
        "tiny-flux" => include_str!("../models/presets/tiny_flux_transformer.json").to_string(),
        "flux-dev" => include_str!("../../assets/flux/flux1_dev_transformer.json").to_string(),
        "flux-schnell" => include_str!("../../assets/flux/flux1_schnell_transformer.json").to_string(),
        file if file.ends_with(".json") => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
            let raw: serde_json::Value = serde_json::from_str(&text)?;
            if raw["_class_name"] != "FluxTransformer2DModel" {
                return Ok(None);
            }
            text
        }
        _ => return Ok(None),
    };
    Ok(Some(serde_json::from_str(&text)?))
}

/// Random-init denoiser of the chosen shape (a UNet, or an SD3 transformer on the flow
/// objective); a full-batch preference step, timed after `warmup` steps, with the device
/// synchronised before each clock read.
pub fn train_step(b: &TrainBench) -> Result<serde_json::Value> {
    set_training_attention(b.attention.parse()?);
    set_block_elements(b.attention_block.unwrap_or(DEFAULT_BLOCK_ELEMENTS));
    let selected = select(b.device.device.as_deref())?;
    let plain = selected.device.clone();
    let device = plain.clone().autodiff();
    let exec = Execution { dtype: selected.precision(&b.device.dtype)?, checkpointing: b.grad_ckpt };
    if !b.resolution.is_multiple_of(8) {
        bail!("--resolution must be a multiple of 8");
    }
    let mut phases = PhaseMemory::new(&plain);
    // With LoRA the frozen base is held in the compute dtype, as `mapo train` holds it.
    let base_dtype = if b.lora.is_some() { exec.dtype } else { DType::F32 };
    let mut w = Weights::random(&device, base_dtype);
    if let Some(rank) = b.lora {
        w = w.with_lora(LoraConfig::new(rank));
    }
    let h = b.resolution / 8;
    let timesteps: Vec<i64> = (0..b.batch).map(|i| (100 + 97 * i as i64) % 1000).collect();
    // The fixed batch: latents of `c` channels, `tokens` text states of width `d`, pooled text.
    let pairs = |c: usize, [tokens, d]: [usize; 2], pooled: usize, time_ids: Option<Tensor<2>>| PairBatch {
        chosen: tensor(1, [b.batch, c, h, h], &device),
        rejected: Some(tensor(2, [b.batch, c, h, h], &device)),
        labels: None,
        noise: tensor(3, [b.batch, c, h, h], &device),
        timesteps: timesteps.clone(),
        encoder_hidden_states: tensor(4, [b.batch, tokens, d], &device),
        text_embeds: tensor(5, [b.batch, pooled], &device),
        time_ids,
        guidance: None,
    };
    let timed = Timed { b, plain: &plain, exec, phases: &mut phases };
    let out = if let Some(config) = flux_config(&b.model)? {
        let model = FluxTransformer2DModel::load(&config, &w)?;
        crate::models::flux::pack::check_latents("latents", h, h)?;
        // The pipeline's 512 T5 tokens; [dev] trains at the embedded guidance 3.5.
        let text = [crate::sample::flux::MAX_SEQUENCE_LENGTH, config.joint_attention_dim];
        let mut batch = pairs(config.latent_channels(), text, config.pooled_projection_dim, None);
        let guidance = crate::sample::flux::DEFAULT_GUIDANCE as f32;
        batch.guidance = Some(Tensor::from_data(TensorData::new(vec![guidance; b.batch], [b.batch]), &device));
        let objective = Objective::Flow(FlowMatching::new(FlowConfig::default())?);
        let params = method_params(&b.method, objective.name(), Params::default());
        timed.run(model, &build(&b.method, params)?, &batch, &objective)?
    } else {
        match sd3_config(&b.model)? {
            Some(config) => {
                let model = SD3Transformer2DModel::load(&config, &w)?;
                model.check_latents(h, h)?;
                // 77 CLIP tokens and the pipeline's 256 T5 tokens.
                let text = [77 + 256, config.joint_attention_dim];
                let batch = pairs(config.in_channels, text, config.pooled_projection_dim, None);
                let objective = Objective::Flow(FlowMatching::new(FlowConfig::default())?);
                let params = method_params(&b.method, objective.name(), Params::default());
                let method = build(&b.method, params)?;
                timed.run(model, &method, &batch, &objective)?
            }
            None => {
                let (config, _) = unet_config(&b.model)?;
                let model = UNet2DConditionModel::load(&config, &w)?;
                let time_dim = config.addition_time_embed_dim.unwrap_or(0) * 6;
                let text_dim = config.projection_class_embeddings_input_dim.unwrap_or(time_dim) - time_dim;
                let size = b.resolution as f32;
                let time_ids = Tensor::from_data(
                    TensorData::new(
                        (0..b.batch).flat_map(|_| [size, size, 0.0, 0.0, size, size]).collect::<Vec<f32>>(),
                        [b.batch, 6],
                    ),
                    &device,
                );
                let batch =
                    pairs(config.in_channels, [77, config.cross_attention_dim], text_dim.max(1), Some(time_ids));
                timed.run(model, &build(&b.method, Params::default())?, &batch, &Objective::sdxl())?
            }
        }
    };
    let (median, min, max, check) = out;
    Ok(json!({
        "bench": "train-step", "framework": "mapo", "method": b.method, "model": b.model, "resolution": b.resolution,
        "batch": b.batch, "dtype": b.device.dtype, "lora": b.lora, "grad_ckpt": b.grad_ckpt, "attention": b.attention,
        "reference_cache": b.reference_cache,
        "attention_block": b.attention_block.unwrap_or(DEFAULT_BLOCK_ELEMENTS),
        "device": selected.backend.name(), "steps": b.steps, "median_s": median, "min_s": min, "max_s": max,
        "samples_per_s": b.batch as f64 / median,
        "finite_check_s": check, "finite_check_share": check / median,
        "peak_device_bytes": plain.memory_pool_usage().map(|u| u.bytes_reserved),
        "peak_rss_bytes": phases.overall_peak(),
        "phases": phases.json(),
    }))
}

/// The timed steps of [`train_step`] on a built model.
struct Timed<'a> {
    b: &'a TrainBench,
    plain: &'a Device,
    exec: Execution,
    phases: &'a mut PhaseMemory,
}

impl Timed<'_> {
    /// `(median, min, max)` step seconds and the median finite-check seconds.
    fn run<M: TrainDenoiser>(
        self,
        mut model: M,
        method: &crate::losses::Method,
        batch: &PairBatch,
        objective: &Objective,
    ) -> Result<(f64, f64, f64, f64)> {
        let Self { b, plain, exec, phases } = self;
        phases.end("build");
        // The frozen reference (DPO-type methods): the same weights without autodiff, with
        // LoRA the adapters off, as `mapo train` runs it.
        let mut reference = method.uses_reference().then(|| {
            let plain = model.valid();
            if b.lora.is_some() { crate::models::lora::disable_adapters(plain) } else { plain }
        });
        // Cached: the errors once, on the plain device, and the reference model dropped.
        let cached = match (b.reference_cache, reference.take()) {
            (true, Some(r)) => Some(pair_errors_in(&r, &plain_batch(batch), objective, exec.dtype, true)),
            (_, r) => {
                reference = r;
                None
            }
        };
        let mut optimizer = Optimizer::new(OptimizerConfig::adamw(1e-5));
        let (mut times, mut checks) = (Vec::new(), Vec::new());
        for i in 0..b.warmup + b.steps {
            plain.sync()?;
            let t0 = Instant::now();
            let mut probe = |p: Phase| phases.end(if p == Phase::Forward { "forward" } else { "backward" });
            let against = match &cached {
                Some(errors) => Reference::Errors(Box::new(errors.clone())),
                None => reference.as_ref().into(),
            };
            let micro = forward_backward_probed(&model, against, method, batch, objective, exec, &mut probe);
            let (next, _) = apply_update(model, &micro.grads, &mut optimizer, 1e-5, 1.0, micro.loss);
            model = next;
            phases.end("update");
            plain.sync()?;
            // The trainer's finite check of the updated weights, timed on its own.
            let t1 = Instant::now();
            let finite = updated_params_finite(&model, &micro.grads);
            if i >= b.warmup {
                checks.push(t1.elapsed().as_secs_f64());
                times.push(t0.elapsed().as_secs_f64());
            }
            if !finite {
                bail!("step {}: the update made parameters non-finite", i + 1);
            }
        }
        let (check, _, _) = stats(&mut checks);
        let (median, min, max) = stats(&mut times);
        Ok((median, min, max, check))
    }
}

/// A batch on the autodiff device as plain tensors (for a reference pass without a graph).
fn plain_batch(batch: &PairBatch) -> PairBatch {
    PairBatch {
        chosen: batch.chosen.clone().inner(),
        rejected: batch.rejected.clone().map(|t| t.inner()),
        labels: batch.labels.clone(),
        noise: batch.noise.clone().inner(),
        timesteps: batch.timesteps.clone(),
        encoder_hidden_states: batch.encoder_hidden_states.clone().inner(),
        text_embeds: batch.text_embeds.clone().inner(),
        time_ids: batch.time_ids.clone().map(|t| t.inner()),
        guidance: batch.guidance.clone().map(|t| t.inner()),
    }
}

/// Memory per phase of a step (build, forward, backward, update): the peak resident memory
/// while it ran (Linux's VmHWM, reset at each phase's start), the resident memory at its end,
/// and the device pool's reserved bytes where the backend reports them; maxima over steps.
struct PhaseMemory {
    device: Device,
    phases: Vec<(&'static str, serde_json::Value)>,
    overall: u64,
}

impl PhaseMemory {
    fn new(device: &Device) -> Self {
        crate::util::reset_peak_rss();
        Self { device: device.clone(), phases: Vec::new(), overall: 0 }
    }

    fn end(&mut self, phase: &'static str) {
        let _ = self.device.sync();
        let peak = peak_rss().unwrap_or(0);
        self.overall = self.overall.max(peak);
        let rss = crate::util::current_rss().unwrap_or(0);
        let reserved = self.device.memory_pool_usage().map_or(0, |u| u.bytes_reserved);
        let slot = match self.phases.iter_mut().find(|(n, _)| *n == phase) {
            Some((_, v)) => v,
            None => {
                self.phases.push((phase, json!({"peak_rss_bytes": 0, "rss_bytes_at_end": 0})));
                &mut self.phases.last_mut().expect("pushed").1
            }
        };
        let max = |v: &serde_json::Value, x: u64| json!(v.as_u64().unwrap_or(0).max(x));
        slot["peak_rss_bytes"] = max(&slot["peak_rss_bytes"], peak);
        slot["rss_bytes_at_end"] = max(&slot["rss_bytes_at_end"], rss);
        if self.device.memory_pool_usage().is_some() {
            slot["device_reserved_bytes"] = max(&slot["device_reserved_bytes"], reserved);
        }
        crate::util::reset_peak_rss();
    }

    /// The process's peak over every phase (the counter is reset per phase).
    fn overall_peak(&self) -> Option<u64> {
        (self.overall > 0).then_some(self.overall)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.phases.iter().map(|(n, v)| (n.to_string(), v.clone())).collect())
    }
}

/// Guided sampling of a random-init UNet (batch 2 for classifier-free guidance).
pub fn generate(
    model: &str,
    resolution: usize,
    steps: usize,
    dtype: &str,
    device: Option<&str>,
) -> Result<serde_json::Value> {
    let selected = select(device)?;
    let device = selected.device.clone();
    let compute = selected.precision(dtype)?;
    let (config, _) = unet_config(model)?;
    let unet = UNet2DConditionModel::load(&config, &Weights::random(&device, compute))?;
    let h = resolution / 8;
    let time_dim = config.addition_time_embed_dim.unwrap_or(0) * 6;
    let text_dim = config.projection_class_embeddings_input_dim.unwrap_or(time_dim) - time_dim;
    let size = resolution as f32;
    let prompts = Prompts {
        context: tensor(4, [1, 77, config.cross_attention_dim], &device).cast(compute),
        text_embeds: tensor(5, [1, text_dim.max(1)], &device).cast(compute),
        time_ids: Some(Tensor::from_data(TensorData::new(vec![size, size, 0.0, 0.0, size, size], [1, 6]), &device)),
        negative: None,
        embedded_guidance: None,
    };
    let euler = EulerSchedule::new(&NoiseSchedule::sdxl(), steps, "leading", 1)?;
    let noise = tensor(6, [1, config.in_channels, h, h], &device).cast(compute);
    device.sync()?;
    let t0 = Instant::now();
    let mut last = t0;
    let mut per_step = Vec::new();
    let latents = sample_latents(&unet, &euler, &prompts, noise, 5.0, &mut |i| {
        if i > 0 {
            let _ = device.sync();
            per_step.push(last.elapsed().as_secs_f64());
            last = Instant::now();
        }
    });
    let _ = latents.into_data();
    per_step.push(last.elapsed().as_secs_f64());
    let total = t0.elapsed().as_secs_f64();
    let (median, min, max) = stats(&mut per_step);
    Ok(json!({
        "bench": "generate", "framework": "mapo", "model": model, "resolution": resolution, "steps": steps, "dtype": dtype,
        "device": selected.backend.name(), "total_s": total, "step_median_s": median, "step_min_s": min, "step_max_s": max,
        "peak_device_bytes": device.memory_pool_usage().map(|u| u.bytes_reserved), "peak_rss_bytes": peak_rss(),
    }))
}
