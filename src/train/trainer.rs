//! The trainer, in three parts as torchtitan's: [`Trainer::prepare`] (models, output folder,
//! data, reference errors), [`Trainer::step`] (one optimizer step: micro-batches on every
//! rank, the mean of their gradients, the shared update, one metrics line) and
//! [`Trainer::finish`] (the adapters or the weights, in the formats users load).
//! `train::run` drives them; the step's forward/backward and update are `train::step`'s,
//! the code `forward train-step` and `bench train-step` run too.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{self, CheckpointState};
use super::config::TrainConfig;
use super::data::to_batch;
use super::drift::Drift;
use super::lr::multiplier;
use super::optim::GradMap;
use super::outdir::OutputLock;
use super::ranks::{Communication, Rank, Reduction, average, each_rank, start_communication};
use super::reference_cache::{ReferenceErrors, ReferencePass};
use super::run::{Start, warn};
use super::setup::{Loaded, Models, open_data, write_run_state};
use super::step::{Execution, MicroStep, Reference, apply_update, forward_backward, updated_params_finite};
use crate::data::stream::{PairSource, PairStream};
use crate::family::TrainDenoiser;
use crate::losses::Method;
use crate::models::folder::save_component;
use crate::models::lora::{
    BlockLayout, LORA_FILE_KOHYA, LORA_FILE_PEFT, LoraFile, LoraFormat, disable_adapters, save_merged, save_merged_from,
};
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::objective::Objective;

/// A run in progress, training the family's denoiser `M`.
pub struct Trainer<'a, M: TrainDenoiser = UNet2DConditionModel> {
    pub config: &'a TrainConfig,
    pub method: Method,
    pub objective: Objective,
    pub ranks: Vec<Rank<M>>,
    reduction: Reduction,
    exec: Execution,
    base_dtype: DType,
    unet_config: serde_json::Value,
    unet_dir: PathBuf,
    pub data: PairSource,
    stream: PairStream,
    reference_errors: Option<ReferenceErrors>,
    vae: Option<(AutoencoderKL, VaeConfig)>,
    /// Optimizer steps done.
    pub done: usize,
    bad_in_a_row: usize,
    drift: Drift,
    peak_reserved: u64,
    metrics_path: PathBuf,
    bar: ProgressBar,
    _lock: OutputLock,
    _communication: Communication,
}

/// One optimizer step's record (also the `metrics.jsonl` line written for it).
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub line: serde_json::Value,
}

/// The sum of the micro-batches' losses (each scaled by its share), the per-metric sums and
/// counts (a micro-batch of desirable images only logs no rejected_loss), and each rank's
/// accumulated gradients.
struct Accumulated {
    loss: f64,
    sums: Vec<(String, f64, usize)>,
    grads: Vec<GradMap>,
}

impl Accumulated {
    fn new(ranks: usize) -> Self {
        Self { loss: 0.0, sums: Vec::new(), grads: vec![GradMap::new(); ranks] }
    }

    /// Adds rank `r`'s micro-batch: `scale` is the number of (micro-batch, rank) shares of a
    /// step, `accum` the micro-batches per rank.
    fn add(&mut self, r: usize, m: MicroStep, scale: f64, accum: usize) {
        self.loss += m.loss / scale;
        for (k, v) in m.metrics {
            match self.sums.iter_mut().find(|(n, _, _)| *n == k) {
                Some((_, s, count)) => (*s, *count) = (*s + v, *count + 1),
                None => self.sums.push((k, v, 1)),
            }
        }
        for (name, g) in m.grads {
            // Each rank's own share of the accumulation; the ranks' mean follows.
            let g = g.div_scalar(accum as f64);
            let total = match self.grads[r].remove(&name) {
                Some(acc) => acc + g,
                None => g,
            };
            self.grads[r].insert(name, total);
        }
    }
}

impl<'a, M: TrainDenoiser> Trainer<'a, M> {
    /// Loads the models, claims the output folder, opens the data and (with
    /// `reference_cache`) computes the reference's errors; nothing of the folder changes
    /// before every input has loaded.
    pub fn prepare(config: &'a TrainConfig, how: &Start) -> Result<Self> {
        let Loaded {
            method,
            models:
                Models { base_dtype, objective, mut ranks, reduction, compute, unet_config, unet_dir, vae_dir, start },
        } = super::setup::load::<M>(config, how)?;
        // Validation decodes through the folder's VAE when it has one.
        let vae = match (config.validation_every > 0, &vae_dir) {
            (true, Some(dir)) => Some(AutoencoderKL::from_dir(dir, &ranks[0].plain, DType::F32)?),
            _ => None,
        };
        // The models have loaded: the folder is claimed only now (a run that cannot start
        // leaves it as it was), then the data is read (a parquet source is cached into it).
        let lock = super::run::claim_output(config, how)?;
        let data = open_data::<M>(config, &method, &unet_config, vae_dir.as_deref())?;
        let global_batch = config.batch_size * ranks.len();
        let expected = start.step * config.grad_accumulation * global_batch;
        if start.cursor != expected {
            bail!(
                "the checkpoint's data position ({} pairs) does not match its step ({expected} pairs expected)",
                start.cursor
            );
        }
        let metrics_path = write_run_state(config, start.step)?;
        if ranks.len() > 1 || reduction == Reduction::Nccl {
            eprintln!(
                "data parallel: {} ranks on {:?}, {} pairs each, global batch {global_batch}; reduction: {}",
                ranks.len(),
                config.devices,
                config.batch_size,
                reduction.describe()
            );
        }
        let reference_errors = if config.reference_cache && method.uses_reference() {
            let remaining = (config.steps - start.step) * config.grad_accumulation * global_batch;
            Some(cache_reference(config, &mut ranks, &data, &objective, compute, start.cursor, remaining)?)
        } else {
            None
        };
        let communication = start_communication(&ranks, reduction);
        let bar = ProgressBar::new(config.steps as u64).with_position(start.step as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}")
                .expect("template"),
        );
        Ok(Self {
            config,
            method,
            objective,
            ranks,
            reduction,
            exec: Execution { dtype: compute, checkpointing: config.gradient_checkpointing },
            base_dtype,
            unet_config,
            unet_dir,
            stream: data.stream(start.cursor, 1),
            data,
            reference_errors,
            vae,
            done: start.step,
            bad_in_a_row: start.bad_in_a_row,
            drift: Drift::resume(&metrics_path, start.step),
            peak_reserved: 0,
            metrics_path,
            bar,
            _lock: lock,
            _communication: communication,
        })
    }

    /// Whether every configured step has run.
    pub fn finished(&self) -> bool {
        self.done >= self.config.steps
    }

    /// The policy as it is now (rank 0's; every rank holds the same weights).
    pub fn unet(&self) -> &M {
        &self.ranks[0].unet
    }

    /// One optimizer step: `grad_accumulation` micro-batches per rank, the ranks' mean
    /// gradient, one update (skipped on a non-finite loss or gradient), one metrics line.
    pub fn step(&mut self) -> Result<StepLog> {
        let t0 = Instant::now();
        let step = self.done;
        let mut acc = self.accumulate()?;
        let config = self.config;
        let grads = average(&mut self.ranks, std::mem::take(&mut acc.grads), self.reduction);
        let lr = self.ranks[0].optimizer.config.lr()
            * multiplier(config.lr_schedule, step, config.steps, config.warmup_steps);
        let mut update = None;
        for (rank, g) in self.ranks.iter_mut().zip(&grads) {
            let unet = rank.unet.clone();
            let (unet, u) = apply_update(unet, g, &mut rank.optimizer, lr, config.max_grad_norm, acc.loss);
            rank.unet = unet;
            update = Some(u);
        }
        let update = update.expect("at least one rank");
        if update.applied {
            self.bad_in_a_row = 0;
            // Undoing an update would need a second copy of weights and optimizer state (30 GB
            // for SDXL): a non-finite weight ends the run instead, before anything is saved.
            // Every rank applied the same update: rank 0 speaks for all.
            if !updated_params_finite(&self.ranks[0].unet, &grads[0]) {
                bail!(
                    "stopping at step {}: the update made parameters non-finite (learning rate {lr:e} too high?); \
                     nothing of this step was saved; last good checkpoint is in {}",
                    step + 1,
                    config.output_dir.display()
                );
            }
        } else {
            self.skipped(step, acc.loss, update.grad_norm)?;
        }
        let logged_norm = if update.applied { update.grad_norm } else { f64::NAN };
        let line = self.log_line(step, &acc, lr, logged_norm, t0.elapsed().as_secs_f64())?;
        self.done = step + 1;
        Ok(StepLog { step: step + 1, loss: acc.loss, line })
    }

    /// Forward and backward of every micro-batch of this step on every rank.
    fn accumulate(&mut self) -> Result<Accumulated> {
        let config = self.config;
        let (accum, ranks_n) = (config.grad_accumulation, self.ranks.len());
        let global_batch = config.batch_size * ranks_n;
        let mut acc = Accumulated::new(ranks_n);
        // Each micro-batch's share per rank: a function of the pairs' cursors only.
        let scale = (accum * ranks_n) as f64;
        let uses_reference = self.method.uses_reference();
        for _ in 0..accum {
            let (rows, cursors) = self.stream.next(global_batch)?;
            let b = config.batch_size;
            let (method, objective, exec) = (&self.method, &self.objective, self.exec);
            let reference_errors = self.reference_errors.as_ref();
            let micro = each_rank(&mut self.ranks, |i, rank| {
                let mine = &cursors[i * b..(i + 1) * b];
                let batch =
                    to_batch(&rows.slice(i * b, b), mine, config.seed, objective, config.guidance, &rank.device);
                let adapters_off =
                    (uses_reference && config.lora.is_some()).then(|| disable_adapters(rank.unet.valid()));
                let reference = match (reference_errors, rank.reference.as_ref().or(adapters_off.as_ref())) {
                    (Some(cached), _) => Reference::Errors(Box::new(cached.get(mine, &rank.plain))),
                    (None, model) => model.into(),
                };
                forward_backward(&rank.unet, reference, method, &batch, objective, exec)
            });
            for (r, m) in micro.into_iter().enumerate() {
                acc.add(r, m, scale, accum);
            }
        }
        Ok(acc)
    }

    /// A skipped update: warn, and stop after `max_bad_steps` in a row.
    fn skipped(&mut self, step: usize, loss: f64, norm: f64) -> Result<()> {
        self.bad_in_a_row += 1;
        let n = self.bad_in_a_row;
        warn(
            &self.bar,
            &format!("step {}: loss {loss}, gradient norm {norm}; update skipped ({n} in a row)", step + 1),
        );
        if n >= self.config.max_bad_steps {
            bail!(
                "stopping: {n} non-finite losses in a row (max_bad_steps); last good checkpoint is in {}",
                self.config.output_dir.display()
            );
        }
        Ok(())
    }

    /// Writes the step's `metrics.jsonl` line and moves the progress bar.
    fn log_line(
        &mut self,
        step: usize,
        acc: &Accumulated,
        lr: f64,
        grad_norm: f64,
        dt: f64,
    ) -> Result<serde_json::Value> {
        let pairs = (self.config.batch_size * self.ranks.len() * self.config.grad_accumulation) as f64;
        let mut line = serde_json::json!({
            "step": step + 1, "loss": acc.loss, "lr": lr, "grad_norm": grad_norm,
            "step_time_s": dt, "samples_per_s": pairs / dt,
            "epoch": self.stream.cursor() as f64 / self.data.len as f64,
        });
        for (k, sum, count) in &acc.sums {
            line[k] = serde_json::json!(sum / *count as f64);
        }
        self.drift.annotate(&mut line);
        // Device memory where the backend reports it (CubeCL backends; not flex).
        if let Some(usage) = self.ranks[0].plain.memory_pool_usage() {
            self.peak_reserved = self.peak_reserved.max(usage.bytes_reserved);
            line["memory_reserved_bytes"] = serde_json::json!(usage.bytes_reserved);
            line["peak_memory_reserved_bytes"] = serde_json::json!(self.peak_reserved);
        }
        if let Some(rss) = crate::util::peak_rss() {
            line["peak_rss_bytes"] = serde_json::json!(rss);
        }
        crate::util::append_jsonl(&self.metrics_path, &line)?;
        self.bar.set_message(format!("loss {:.5}", acc.loss));
        self.bar.inc(1);
        Ok(line)
    }

    /// Validation samples and checkpoints due after the step just done.
    pub fn after_step(&mut self) -> Result<()> {
        let (config, done) = (self.config, self.done);
        let unet = &self.ranks[0].unet;
        if config.validation_every > 0 && (done % config.validation_every == 0 || done == config.steps) {
            let dir = config.output_dir.join("validation").join(format!("step-{done:08}"));
            super::run::validate(config, unet, &self.data, &self.objective, self.vae.as_ref(), &dir)?;
            warn(&self.bar, &format!("validation samples: {}", dir.display()));
        }
        if (config.checkpoint_every > 0 && done % config.checkpoint_every == 0) || done == config.steps {
            // Rank 0 writes; every rank resumes from it (the ranks' states are identical).
            let state = CheckpointState {
                step: done,
                optimizer_step: self.ranks[0].optimizer.step,
                bad_in_a_row: self.bad_in_a_row,
                seed: config.seed,
                micro_batches_done: done * config.grad_accumulation,
                data_cursor: Some(self.stream.cursor()),
                data_position: Some(self.data.position(self.stream.cursor())),
                ranks: self.ranks.len(),
            };
            let lora = config.lora.is_some();
            let optimizer = &self.ranks[0].optimizer;
            checkpoint::save(
                &config.output_dir,
                &state,
                unet,
                &[],
                &self.unet_config,
                optimizer,
                config.keep_checkpoints,
                lora,
            )?;
        }
        Ok(())
    }

    /// The final model, in the formats users load ([`save_final`]).
    pub fn finish(self) -> Result<()> {
        self.bar.finish();
        save_final(self.config, &self.ranks[0].unet, &self.unet_config, self.base_dtype, &self.unet_dir)
    }
}

/// The final model: LoRA adapters in diffusers' format (and, for SDXL's UNet and FLUX's
/// transformer, kohya's, as ComfyUI and A1111 load them) and the denoiser with them merged in; or the fine-tuned
/// denoiser, in a folder named as in the pipeline (`unet/`, `transformer/`).
pub fn save_final<M: TrainDenoiser>(
    config: &TrainConfig,
    unet: &M,
    unet_config: &serde_json::Value,
    base_dtype: DType,
    unet_dir: &std::path::Path,
) -> Result<()> {
    let out = &config.output_dir;
    let folder = out.join(M::COMPONENT);
    match &config.lora {
        Some(lora) => {
            let peft = LoraFile::from_module(unet, lora.scale()).for_component(M::COMPONENT);
            match unet.as_unet() {
                Some(_) => {
                    let layout = BlockLayout::of(&serde_json::from_value(unet_config.clone())?)?;
                    peft.write(&out.join(LORA_FILE_PEFT), LoraFormat::Peft, &layout)?;
                    peft.write(&out.join(LORA_FILE_KOHYA), LoraFormat::Kohya, &layout)?;
                }
                None => {
                    let none = BlockLayout::uniform(0, 0);
                    peft.write(&out.join(LORA_FILE_PEFT), LoraFormat::Peft, &none)?;
                    // FLUX's kohya layout is BFL's layer names; SD3 has none in use.
                    if M::KOHYA_LAYOUT {
                        peft.write(&out.join(LORA_FILE_KOHYA), LoraFormat::Kohya, &none)?;
                    }
                }
            }
            if base_dtype == DType::F32 {
                save_merged(unet, unet_config, &folder, lora.scale())?;
            } else {
                // The base was held in the compute dtype: merge into the folder's own weights.
                let base = crate::models::io::SafeTensorFiles::open_component(unet_dir, &["diffusion_pytorch_model"])?;
                save_merged_from(unet, &base, unet_config, &folder, lora.scale())?;
            }
        }
        None => save_component(unet, unet_config, &folder, DType::F32)?,
    }
    if config.export.contains(&super::config::ExportFormat::SingleFile) {
        // SDXL and SD3: the base model's other components beside the trained denoiser, in
        // one file; FLUX: the trained transformer alone, in BFL's layout (as
        // flux1-dev.safetensors).
        let dtype = config.export_dtype.as_deref().unwrap_or("f16").parse::<crate::device::Precision>()?.dtype();
        let file = out.join("model.safetensors");
        let model = crate::models::folder::model_folder(&config.model)?;
        crate::models::single_file::convert::to_single_file_with(&model, Some(&folder), &file, dtype)?;
        eprintln!("wrote {} (single file, {dtype:?})", file.display());
    }
    Ok(())
}

/// The frozen reference's errors for the `count` pairs from `cursor` on; the reference model
/// is freed afterwards (with LoRA it is the policy with its adapters off: nothing to free).
fn cache_reference<M: TrainDenoiser>(
    config: &TrainConfig,
    ranks: &mut [Rank<M>],
    data: &PairSource,
    objective: &Objective,
    compute: DType,
    cursor: usize,
    count: usize,
) -> Result<ReferenceErrors> {
    let plain: Device = ranks[0].plain.clone();
    let adapters_off = config.lora.is_some().then(|| disable_adapters(ranks[0].unet.valid()));
    let model = ranks[0].reference.as_ref().or(adapters_off.as_ref()).expect("a reference for this method");
    let chunk = config.batch_size * ranks.len();
    let pass = ReferencePass { reference: model, device: &plain, dtype: compute, chunk, guidance: config.guidance };
    let t0 = Instant::now();
    let cached = ReferenceErrors::compute(&pass, data, objective, cursor, count)?;
    ranks.iter_mut().for_each(|r| r.reference = None);
    eprintln!(
        "reference_cache: the reference's errors for {count} pairs computed in {:.1} s; reference model freed",
        t0.elapsed().as_secs_f64()
    );
    Ok(cached)
}
