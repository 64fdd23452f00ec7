//! `mapo train`: a run driven through the [`Trainer`]'s prepare / step / finish, and the
//! output folder's bookkeeping (claiming it, cutting metrics back on resume, validation).

use std::path::Path;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;

use super::config::TrainConfig;
use super::outdir::{self, OutputLock};
use super::trainer::Trainer;
use crate::data::stream::PairSource;
use crate::family::{Family, TrainDenoiser};
use crate::models::flux::FluxTransformer2DModel;
use crate::models::io::write_atomic;
use crate::models::sd3::SD3Transformer2DModel;
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::objective::{Objective, ObjectiveName};
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

/// Runs (or resumes) a training run of the model folder's family; returns the final loss.
pub fn train(config: &TrainConfig, start: &Start) -> Result<f64> {
    crate::models::folder::set_single_file_configs(config.model_config.as_deref());
    let family = Family::detect(&config.model)?;
    if let Some(g) = config.guidance {
        anyhow::ensure!(
            family == Family::Flux,
            "guidance = {g}: the embedded guidance scale applies to FLUX.1 models; {} is a {} folder",
            config.model.display(),
            family.name()
        );
    }
    match family {
        Family::Sdxl => train_with::<UNet2DConditionModel>(config, start, &mut |_, _| Ok(())),
        // A flow-matching model trains on its own objective (`[flow]` tunes it); the
        // `objective` key chooses only for UNets (the built-in flow experiment).
        Family::Sd3 => {
            let mut config = config.clone();
            config.objective = ObjectiveName::Flow;
            train_with::<SD3Transformer2DModel>(&config, start, &mut |_, _| Ok(()))
        }
        Family::Flux => {
            let mut config = config.clone();
            config.objective = ObjectiveName::Flow;
            config.guidance = Some(config.guidance.unwrap_or(crate::sample::flux::DEFAULT_GUIDANCE));
            // diffusers' FLUX scripts draw σ from the scheduler's training grid, which is
            // unshifted when the pipeline shifts dynamically ([dev]) and shifted by `shift`
            // otherwise ([schnell]: 1.0); SD3's default 3.0 would be another distribution.
            if config.lora.is_none() {
                warn_full_fine_tuning(&config.model)?;
            }
            if config.flow.is_none() {
                let folder = crate::models::folder::model_folder(&config.model)?;
                let scheduler = match folder.join("scheduler").join("scheduler_config.json").is_file() {
                    true => Some(crate::sample::sd3::FlowSchedulerConfig::read_for(&folder, true)?),
                    false => None,
                };
                let shift = scheduler.map_or(1.0, |s| if s.use_dynamic_shifting { 1.0 } else { s.shift });
                config.flow = Some(crate::objective::FlowConfig { shift, ..Default::default() });
            }
            train_with::<FluxTransformer2DModel>(&config, start, &mut |_, _| Ok(()))
        }
    }
}

/// Full fine-tuning holds f32 weights, their gradients and AdamW's two moments: 16 bytes a
/// parameter before any activation. FLUX.1's 11.9 B parameters need 190 GB, more than any
/// one GPU: said before the weights load (counted from the config, nothing allocated).
fn warn_full_fine_tuning(model: &Path) -> Result<()> {
    const ONE_GPU: f64 = 80e9;
    let dir = crate::models::folder::component_dir(model, "transformer")?;
    let (config, _) = crate::models::config::read_config(&dir)?;
    let w = crate::models::weights::Weights::shapes_only(&burn::tensor::Device::default());
    drop(FluxTransformer2DModel::load(&config, &w)?);
    let params: usize = w.requested().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    let bytes = params as f64 * 16.0;
    if bytes > ONE_GPU {
        eprintln!(
            "warning: full fine-tuning of this FLUX transformer ({:.1} B parameters) needs ≈ {:.0} GB for f32 \
             weights, gradients and AdamW's moments before any activation — more than one 80 GB GPU holds. \
             Train LoRA adapters instead ([lora] rank = 16): the base stays frozen in bf16 ({:.0} GB).",
            params as f64 / 1e9,
            bytes / 1e9,
            params as f64 * 2.0 / 1e9
        );
    }
    Ok(())
}

/// Called after every optimizer step (1-based) with the current weights; the experiment
/// runner scores the model from here.
pub type StepHook<'a, M = UNet2DConditionModel> = dyn FnMut(usize, &M) -> Result<()> + 'a;

/// Takes the output folder for this run: locked, cleaned of dead writers' leftovers, and
/// refused when it holds another run (unless `overwrite`) or, on resume, a run whose
/// math-changing settings differ from `config`'s.
pub(crate) fn claim_output(config: &TrainConfig, start: &Start) -> Result<OutputLock> {
    let out = &config.output_dir;
    let lock = outdir::lock(out)?;
    outdir::refuse_symlinks(out)?;
    outdir::clean_stale(out)?;
    if outdir::holds_partial_run(out) && (start.resume.as_deref() == Some("latest") || start.resume.is_none()) {
        // Killed before its first checkpoint: nothing to resume, nothing finished. Its files
        // go (so nothing of it mixes into this run) and the run starts from step 0.
        outdir::discard_partial(out)?;
        eprintln!("{}: the run there stopped before its first checkpoint; starting it afresh", out.display());
        return Ok(lock);
    }
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
pub fn train_with<M: TrainDenoiser>(config: &TrainConfig, how: &Start, hook: &mut StepHook<M>) -> Result<f64> {
    let mut trainer = Trainer::<M>::prepare(config, how)?;
    let mut last_loss = f64::NAN;
    while !trainer.finished() {
        let log = trainer.step()?;
        last_loss = log.loss;
        hook(log.step, trainer.unet())?;
        trainer.after_step()?;
    }
    trainer.finish()?;
    Ok(last_loss)
}

/// On resume, drop the metric lines of steps after the checkpoint, so the log reads as
/// one uninterrupted run.
pub(super) fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
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
pub(super) fn validate(
    config: &TrainConfig,
    unet: &impl TrainDenoiser,
    data: &PairSource,
    objective: &Objective,
    vae: Option<&(AutoencoderKL, VaeConfig)>,
    dir: &Path,
) -> Result<()> {
    let sampler = objective.sampler(config.validation_steps)?;
    let device = unet.devices().first().cloned().map(|d| d.inner()).expect("the UNet has parameters");
    let (mut plain, shape) = super::data::prompts(data, config.validation_prompts, &device)?;
    let noise = initial_noise(config.seed, plain.context.dims()[0], shape, &plain.context.device());
    // FLUX embeds the training guidance scale instead of running classifier-free guidance.
    let cfg = match config.guidance {
        Some(g) => {
            plain.embedded_guidance = Some(g as f32);
            1.0
        }
        None => config.validation_guidance,
    };
    let latents = sample_latents(&unet.valid(), sampler.as_ref(), &plain, noise, cfg, &mut |_| {});
    save_samples(latents, vae.map(|(v, c)| (v, c)), dir)
}

/// A message above the progress bar, or on stderr when the bar is not drawn (no terminal):
/// indicatif drops `println` of a hidden bar.
pub(crate) fn warn(bar: &ProgressBar, msg: &str) {
    if bar.is_hidden() { eprintln!("{msg}") } else { bar.println(msg) }
}
