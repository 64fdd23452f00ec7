//! `mapo train`: the training loop.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{DType, Device};
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{self, CheckpointState};
use super::config::TrainConfig;
use super::data::to_batch;
use super::drift::Drift;
use super::grad_clip::{clip_coefficient, global_grad_norm};
use super::lr::multiplier;
use super::optim::{GradMap, Optimizer};
use super::outdir::{self, OutputLock};
use super::ranks::{
    Rank, Reduction, average, each_rank, reduction_for, replicate, replicate_optimizer, select_devices,
    start_communication,
};
use super::reference_cache::{ReferenceErrors, ReferencePass};
use super::step::{Reference, forward_backward, updated_params_finite};
use crate::data::stream::PairSource;
use crate::losses::{Params, build};
use crate::models::folder::component_dir;
use crate::models::folder::save_component;
use crate::models::io::write_atomic;
use crate::models::lora::{
    BlockLayout, LORA_FILE_KOHYA, LORA_FILE_PEFT, LoraFormat, disable_adapters, save_lora, save_merged,
};
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::sample::euler::EulerSchedule;
use crate::sample::schedule::NoiseSchedule;
use crate::sample::validate::{initial_noise, sample_latents, save_samples};

/// How a run starts in its output folder.
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// `latest` or a checkpoint folder.
    pub resume: Option<String>,
    /// A folder holding another run is moved aside (`<dir>.previous-N`) instead of refused.
    pub overwrite: bool,
}

impl Start {
    pub fn resume(which: Option<&str>) -> Self {
        Self { resume: which.map(str::to_string), overwrite: false }
    }
}

/// Runs (or resumes) a training run; returns the final loss.
pub fn train(config: &TrainConfig, start: &Start) -> Result<f64> {
    train_with(config, start, &mut |_, _| Ok(()))
}

/// Called after every optimizer step (1-based) with the current weights; the experiment
/// runner scores the model from here.
pub type StepHook<'a> = dyn FnMut(usize, &UNet2DConditionModel) -> Result<()> + 'a;

/// Takes the output folder for this run: locked, cleaned of dead writers' leftovers, and
/// refused when it holds another run (unless `overwrite`) or, on resume, a run whose
/// math-changing settings differ from `config`'s.
fn claim_output(config: &TrainConfig, start: &Start) -> Result<OutputLock> {
    let out = &config.output_dir;
    let lock = outdir::lock(out)?;
    outdir::refuse_symlinks(out)?;
    outdir::clean_stale(out)?;
    match &start.resume {
        None if outdir::holds_run(out) => {
            if !start.overwrite {
                bail!(
                    "{} holds another run (config.toml, metrics or checkpoints): continue it with --resume latest, \
                     move it aside with --overwrite, or choose another output_dir",
                    out.display()
                );
            }
            let aside = outdir::move_aside(out)?;
            eprintln!("--overwrite: the previous run in {} was moved to {}", out.display(), aside.display());
        }
        None => {}
        Some(_) => {
            let saved = out.join("config.toml");
            if let Ok(text) = std::fs::read_to_string(&saved) {
                let before: TrainConfig =
                    toml::from_str(&text).with_context(|| format!("{} (the run's saved config)", saved.display()))?;
                let changed = super::config::math_changes(&before, config)?;
                if !changed.is_empty() {
                    bail!(
                        "--resume: the run in {} was started with other settings; resuming would mix two runs:\n  {}\n\
                         undo these changes, or start a new run elsewhere",
                        out.display(),
                        changed.join("\n  ")
                    );
                }
            }
        }
    }
    Ok(lock)
}

/// [`train`], calling `hook` after every step.
pub fn train_with(config: &TrainConfig, how: &Start, hook: &mut StepHook) -> Result<f64> {
    let out = &config.output_dir;
    let method = build(&config.method, Params::from_map(config.method_params.clone()))?;
    let selected = select_devices(config.device.as_deref(), &config.devices)?;
    let backends: Vec<_> = selected.iter().map(|s| s.backend).collect();
    let reduction = reduction_for(&backends);
    let autodiff = |plain: &Device| {
        if config.gradient_checkpointing {
            plain.clone().autodiff().gradient_checkpointing()
        } else {
            plain.clone().autodiff()
        }
    };
    let plain = selected[0].device.clone();
    let device = autodiff(&plain);
    let compute = selected[0].precision(&config.dtype)?;
    let unet_dir = component_dir(&config.model, "unet")?;
    let (_, unet_config) = crate::models::config::read_config::<serde_json::Value>(&unet_dir)?;
    let schedule = NoiseSchedule::sdxl();
    let ranks_n = selected.len();
    let global_batch = config.batch_size * ranks_n;

    let opt_config = config.optimizer.build()?;
    let mut optimizer = Optimizer::new(opt_config);

    let metrics_path = out.join("metrics.jsonl");
    let (unet, start, mut bad_in_a_row, cursor) = match how.resume.as_deref() {
        Some(which) => {
            let dir = checkpoint::resolve(out, which)?;
            let (state, unet_ckpt) = checkpoint::load(&dir, &mut optimizer, &plain)?;
            if state.seed != config.seed || state.micro_batches_done != state.step * config.grad_accumulation {
                bail!(
                    "{}: written with seed {} and {} micro-batches per step; this config has seed {} and {}",
                    dir.display(),
                    state.seed,
                    state.micro_batches_done / state.step.max(1),
                    config.seed,
                    config.grad_accumulation
                );
            }
            if state.ranks != ranks_n {
                bail!(
                    "{}: written by a run of {} rank(s); this config has {ranks_n} (the global batch would change): \
                     resume with the same number of devices",
                    dir.display(),
                    state.ranks
                );
            }
            let cursor = state.data_cursor.unwrap_or(state.micro_batches_done * config.batch_size);
            eprintln!("resuming from {} (step {})", dir.display(), state.step);
            let unet = match &config.lora {
                Some(lora) => {
                    let adapters = Some(unet_ckpt.as_path());
                    UNet2DConditionModel::from_dir_with_lora(
                        &unet_dir,
                        &device,
                        DType::F32,
                        Some(lora.clone()),
                        adapters,
                    )?
                    .0
                }
                None => UNet2DConditionModel::from_dir(&unet_ckpt, &device, DType::F32)?.0,
            };
            (unet, state.step, state.bad_in_a_row, cursor)
        }
        None => {
            // Fresh LoRA adapters are drawn from the device's generator: seed it.
            plain.seed(config.seed);
            device.seed(config.seed);
            (
                UNet2DConditionModel::from_dir_with_lora(&unet_dir, &device, DType::F32, config.lora.clone(), None)?.0,
                0,
                0,
                0,
            )
        }
    };
    let uses_reference = method.uses_reference();
    if config.reference_cache && !uses_reference {
        eprintln!("note: reference_cache has no effect: {} uses no reference model", method.name);
    }
    if config.reference_cache && method.needs.predictions {
        bail!(
            "reference_cache: method {} needs the reference's predictions, and the cache holds only its errors; \
             set reference_cache = false",
            method.name
        );
    }
    if !method.needs.pairs && ranks_n > 1 {
        // KTO's k is a statistic of the whole batch: per-rank values would change the method.
        bail!("method {} is not supported with more than one device yet (devices has {ranks_n})", method.name);
    }
    // Reference-free methods never build the reference. With LoRA the base weights are
    // frozen, so the reference is the policy with its adapters zeroed (no second copy).
    let reference = if uses_reference && config.lora.is_none() {
        Some(UNet2DConditionModel::from_dir(&unet_dir, &plain, DType::F32)?.0)
    } else {
        None
    };
    let mut ranks = vec![Rank { backend: backends[0], plain: plain.clone(), device, unet, reference, optimizer }];
    for s in &selected[1..] {
        let first = &ranks[0];
        let device = autodiff(&s.device);
        ranks.push(Rank {
            backend: s.backend,
            plain: s.device.clone(),
            unet: replicate(&first.unet, &device),
            reference: first.reference.clone().map(|r| r.to_device(&s.device)),
            optimizer: replicate_optimizer(&first.optimizer, &s.device),
            device,
        });
    }

    // Validation decodes through the folder's VAE when it has one.
    let vae_dir = component_dir(&config.model, "vae").ok();
    let vae = match (config.validation_every > 0, &vae_dir) {
        (true, Some(dir)) => Some(AutoencoderKL::from_dir(dir, &plain, DType::F32)?),
        _ => None,
    };
    // The models have loaded: the folder is claimed only now (a run that cannot start
    // leaves it as it was), then the data is read (a parquet source is cached into it).
    let _lock = claim_output(config, how)?;
    let data_path = if crate::data::cache::is_parquet(&config.data) {
        crate::data::cache::ensure(
            &config.model,
            &config.data,
            &out.join("cache"),
            &config.data_transform,
            &config.data_read,
            config.seed,
            config.device.as_deref(),
        )?
    } else {
        config.data.clone()
    };
    let data = PairSource::open(&data_path, config.seed, config.shuffle_shards, config.sample_latents)?;
    if data.unpaired && method.needs.pairs {
        bail!(
            "{}: holds unpaired images with labels, but method {} needs preference pairs (a chosen and a rejected \
             image per prompt); train it on pair data, or use a method for unpaired data ({})",
            data_path.display(),
            method.name,
            crate::losses::unpaired_names().join(", ")
        );
    }
    data.check_model(&data_path, &serde_json::from_value(unet_config.clone())?)?;
    if let Some(dir) = &vae_dir {
        data.check_vae(&crate::models::config::read_config::<serde_json::Value>(dir)?.1)?;
    }
    let expected = start * config.grad_accumulation * global_batch;
    if cursor != expected {
        bail!("the checkpoint's data position ({cursor} pairs) does not match its step ({expected} pairs expected)");
    }
    // Every input has loaded: only now is the folder's run state written.
    write_atomic(&out.join("config.toml"), toml::to_string_pretty(config)?.as_bytes())?;
    if start > 0 {
        truncate_metrics(&metrics_path, start)?;
    } else {
        let _ = std::fs::remove_file(&metrics_path);
    }
    if ranks_n > 1 || reduction == Reduction::Nccl {
        eprintln!(
            "data parallel: {ranks_n} ranks on {:?}, {} pairs each, global batch {global_batch}; reduction: {}",
            config.devices,
            config.batch_size,
            reduction.describe()
        );
    }
    let accum = config.grad_accumulation;
    let reference_errors = if config.reference_cache && uses_reference {
        let remaining = (config.steps - start) * accum * global_batch;
        let adapters_off = config.lora.is_some().then(|| disable_adapters(ranks[0].unet.valid()));
        let model = ranks[0].reference.as_ref().or(adapters_off.as_ref()).expect("a reference for this method");
        let pass = ReferencePass { reference: model, device: &plain, dtype: compute, chunk: global_batch };
        let t0 = Instant::now();
        let cached = ReferenceErrors::compute(&pass, &data, &schedule, cursor, remaining)?;
        ranks.iter_mut().for_each(|r| r.reference = None);
        eprintln!(
            "reference_cache: the reference's errors for {remaining} pairs computed in {:.1} s; reference model freed",
            t0.elapsed().as_secs_f64()
        );
        Some(cached)
    } else {
        None
    };
    let _communication = start_communication(&ranks, reduction);
    let mut stream = data.stream(cursor, 1);
    let bar = ProgressBar::new(config.steps as u64).with_position(start as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").expect("template"),
    );
    let mut last_loss = f64::NAN;
    let mut peak_reserved = 0;
    let mut drift = Drift::resume(&metrics_path, start);
    for step in start..config.steps {
        let t0 = Instant::now();
        let mut grads: Vec<GradMap> = vec![GradMap::new(); ranks_n];
        // Metrics: sum and count of the micro-batches that logged each (a micro-batch of
        // desirable images only has no rejected_loss).
        let (mut loss, mut sums): (f64, Vec<(String, f64, usize)>) = (0.0, Vec::new());
        // Each micro-batch's share per rank: a function of the pairs' cursors only.
        let scale = (accum * ranks_n) as f64;
        for _ in 0..accum {
            let (rows, cursors) = stream.next(global_batch)?;
            let b = config.batch_size;
            let micro = each_rank(&mut ranks, |i, rank| {
                let batch = to_batch(
                    &rows.slice(i * b, b),
                    &cursors[i * b..(i + 1) * b],
                    config.seed,
                    schedule.num_train_timesteps(),
                    &rank.device,
                );
                let adapters_off =
                    (uses_reference && config.lora.is_some()).then(|| disable_adapters(rank.unet.valid()));
                let reference = match (&reference_errors, rank.reference.as_ref().or(adapters_off.as_ref())) {
                    (Some(cached), _) => {
                        Reference::Errors(Box::new(cached.get(&cursors[i * b..(i + 1) * b], &rank.plain)))
                    }
                    (None, model) => model.into(),
                };
                forward_backward(&rank.unet, reference, &method, &batch, &schedule, compute)
            });
            for (r, m) in micro.into_iter().enumerate() {
                loss += m.loss / scale;
                for (k, v) in m.metrics {
                    match sums.iter_mut().find(|(n, _, _)| *n == k) {
                        Some((_, s, count)) => (*s, *count) = (*s + v, *count + 1),
                        None => sums.push((k, v, 1)),
                    }
                }
                for (name, g) in m.grads {
                    // Each rank's own share of the accumulation; the ranks' mean follows.
                    let g = g.div_scalar(accum as f64);
                    let total = match grads[r].remove(&name) {
                        Some(acc) => acc + g,
                        None => g,
                    };
                    grads[r].insert(name, total);
                }
            }
        }
        let grads = average(&mut ranks, grads, reduction);
        let lr =
            ranks[0].optimizer.config.lr() * multiplier(config.lr_schedule, step, config.steps, config.warmup_steps);
        let grad_norm;
        let norm = if loss.is_finite() { global_grad_norm(&grads[0]) } else { f64::NAN };
        if norm.is_finite() {
            bad_in_a_row = 0;
            let coefficient = clip_coefficient(norm, config.max_grad_norm);
            for (rank, g) in ranks.iter_mut().zip(&grads) {
                let unet = rank.unet.clone();
                rank.unet = rank.optimizer.step(unet, g, coefficient, lr);
            }
            grad_norm = norm;
            // Undoing an update would need a second copy of weights and optimizer state (30 GB
            // for SDXL): a non-finite weight ends the run instead, before anything is saved.
            // Every rank applied the same update: rank 0 speaks for all.
            if !updated_params_finite(&ranks[0].unet, &grads[0]) {
                bail!(
                    "stopping at step {}: the update made parameters non-finite (learning rate {lr:e} too high?); \
                     nothing of this step was saved; last good checkpoint is in {}",
                    step + 1,
                    out.display()
                );
            }
        } else {
            bad_in_a_row += 1;
            grad_norm = f64::NAN;
            warn(
                &bar,
                &format!(
                    "step {}: loss {loss}, gradient norm {norm}; update skipped ({bad_in_a_row} in a row)",
                    step + 1
                ),
            );
            if bad_in_a_row >= config.max_bad_steps {
                bail!(
                    "stopping: {bad_in_a_row} non-finite losses in a row (max_bad_steps); last good checkpoint is in {}",
                    out.display()
                );
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        let mut line = serde_json::json!({
            "step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "step_time_s": dt, "samples_per_s": (global_batch * accum) as f64 / dt,
            "epoch": stream.cursor() as f64 / data.len as f64,
        });
        for (k, sum, count) in &sums {
            line[k] = serde_json::json!(sum / *count as f64);
        }
        drift.annotate(&mut line);
        // Device memory where the backend reports it (CubeCL backends; not flex).
        if let Some(usage) = plain.memory_pool_usage() {
            peak_reserved = peak_reserved.max(usage.bytes_reserved);
            line["memory_reserved_bytes"] = serde_json::json!(usage.bytes_reserved);
            line["peak_memory_reserved_bytes"] = serde_json::json!(peak_reserved);
        }
        if let Some(rss) = crate::device::peak_rss() {
            line["peak_rss_bytes"] = serde_json::json!(rss);
        }
        crate::util::append_jsonl(&metrics_path, &line)?;
        bar.set_message(format!("loss {loss:.5}"));
        bar.inc(1);
        last_loss = loss;

        let done = step + 1;
        let unet = &ranks[0].unet;
        hook(done, unet)?;
        if config.validation_every > 0 && (done % config.validation_every == 0 || done == config.steps) {
            let dir = out.join("validation").join(format!("step-{done:08}"));
            validate(config, unet, &data, &schedule, vae.as_ref(), &dir)?;
            warn(&bar, &format!("validation samples: {}", dir.display()));
        }
        if (config.checkpoint_every > 0 && done % config.checkpoint_every == 0) || done == config.steps {
            // Rank 0 writes; every rank resumes from it (the ranks' states are identical).
            let state = CheckpointState {
                step: done,
                optimizer_step: ranks[0].optimizer.step,
                bad_in_a_row,
                seed: config.seed,
                micro_batches_done: done * accum,
                data_cursor: Some(stream.cursor()),
                data_position: Some(data.position(stream.cursor())),
                ranks: ranks_n,
            };
            checkpoint::save(
                out,
                &state,
                unet,
                &unet_config,
                &ranks[0].optimizer,
                config.keep_checkpoints,
                config.lora.is_some(),
            )?;
        }
    }
    bar.finish();
    let unet = &ranks[0].unet;
    match &config.lora {
        // The adapters in diffusers' format and in kohya's (ComfyUI, A1111), and the UNet
        // with them merged in.
        Some(lora) => {
            let layout = BlockLayout::of(&serde_json::from_value(unet_config.clone())?)?;
            save_lora(unet, &out.join(LORA_FILE_PEFT), LoraFormat::Peft, &layout, lora.scale())?;
            save_lora(unet, &out.join(LORA_FILE_KOHYA), LoraFormat::Kohya, &layout, lora.scale())?;
            save_merged(unet, &unet_config, &out.join("unet"), lora.scale())?;
        }
        None => save_component(unet, &unet_config, &out.join("unet"), DType::F32)?,
    }
    Ok(last_loss)
}

/// On resume, drop the metric lines of steps after the checkpoint, so the log reads as
/// one uninterrupted run.
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    write_atomic(path, body.as_bytes())
}

/// Samples the validation prompts with the current weights (without autodiff) into `dir`.
fn validate(
    config: &TrainConfig,
    unet: &UNet2DConditionModel,
    data: &PairSource,
    schedule: &NoiseSchedule,
    vae: Option<&(AutoencoderKL, VaeConfig)>,
    dir: &Path,
) -> Result<()> {
    let euler = EulerSchedule::new(schedule, config.validation_steps, "leading", 1)?;
    let device = unet.devices().first().cloned().map(|d| d.inner()).expect("the UNet has parameters");
    let (plain, shape) = super::data::prompts(data, config.validation_prompts, &device)?;
    let noise = initial_noise(config.seed, plain.context.dims()[0], shape, &plain.context.device());
    let latents = sample_latents(&unet.valid(), &euler, &plain, noise, config.validation_guidance, &mut |_| {});
    save_samples(latents, vae.map(|(v, c)| (v, c.scaling_factor)), dir)
}

/// A message above the progress bar, or on stderr when the bar is not drawn (no terminal):
/// indicatif drops `println` of a hidden bar.
fn warn(bar: &ProgressBar, msg: &str) {
    if bar.is_hidden() { eprintln!("{msg}") } else { bar.println(msg) }
}
