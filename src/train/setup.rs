//! What a run needs before its first step: the method and objective, the devices and their
//! ranks with the policy (fresh or from a checkpoint) and, for DPO-type methods without
//! LoRA, the frozen reference; then the data, checked against the model and the method.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::tensor::{DType, Device};

use super::checkpoint;
use super::config::TrainConfig;
use super::optim::Optimizer;
use super::outdir;
use super::ranks::{Rank, Reduction, reduction_for, replicate, replicate_optimizer, select_devices};
use super::run::Start;
use crate::data::stream::PairSource;
use crate::family::TrainDenoiser;
use crate::losses::{Method, Params, build};
use crate::models::folder::component_dir;
use crate::models::io::write_atomic;
use crate::objective::Objective;

/// Where the run starts: 0 for a fresh run, else the checkpoint's step and data cursor.
pub struct StartState {
    pub step: usize,
    /// The checkpoint resumed from (None for a fresh run).
    pub dir: Option<PathBuf>,
    pub bad_in_a_row: usize,
    pub cursor: usize,
}

/// The models and settings of a run, loaded (nothing written yet).
pub struct Loaded<M> {
    pub method: Method,
    pub models: Models<M>,
}

/// Loads what [`Loaded`] holds for `config`, resuming from `how.resume` when given.
pub fn load<M: TrainDenoiser>(config: &TrainConfig, how: &Start) -> Result<Loaded<M>> {
    crate::models::folder::set_single_file_configs(config.model_config.as_deref());
    let objective = config.objective()?;
    for (k, v) in objective.name().method_defaults(&config.method) {
        if !config.method_params.contains_key(*k) {
            eprintln!(
                "note: {} on the {} objective: {k} = {v} (this objective's default; method_params.{k} overrides it)",
                config.method,
                objective.name().as_str()
            );
        }
    }
    let params = method_params(&config.method, objective.name(), Params::from_map(config.method_params.clone()));
    let method = build(&config.method, params)?;
    // Reference-free methods never build the reference. With LoRA the base weights are
    // frozen, so the reference is the policy with its adapters zeroed (no second copy).
    let with_reference = method.uses_reference() && config.lora.is_none();
    let models = load_models::<M>(config, how, with_reference)?;
    check_method(config, &method, models.ranks.len())?;
    Ok(Loaded { method, models })
}

/// The devices, models and settings of a run (an online run starts from these too).
pub struct Models<M> {
    /// The dtype the policy's frozen base is held in: the compute dtype with LoRA (bf16
    /// bytes for a bf16 run; the adapters are f32), f32 for full fine-tuning (master weights).
    pub base_dtype: DType,
    pub objective: Objective,
    pub ranks: Vec<Rank<M>>,
    pub reduction: Reduction,
    pub compute: DType,
    pub unet_config: serde_json::Value,
    /// The denoiser's folder (the merged export of a bf16 LoRA run reads its weights back).
    pub unet_dir: PathBuf,
    pub vae_dir: Option<PathBuf>,
    pub start: StartState,
}

/// The devices, the policy on each rank (fresh or resumed) and, when `with_reference`, the
/// frozen reference loaded from the model folder.
pub fn load_models<M: TrainDenoiser>(config: &TrainConfig, how: &Start, with_reference: bool) -> Result<Models<M>> {
    crate::models::folder::set_single_file_configs(config.model_config.as_deref());
    let family = crate::family::Family::detect(&config.model)?;
    let objective = config.objective()?;
    let selected = select_devices(config.device.as_deref(), &config.devices)?;
    let backends: Vec<_> = selected.iter().map(|s| s.backend).collect();
    let reduction = reduction_for(&backends);
    let plain = selected[0].device.clone();
    // Gradient checkpointing is mapo's own, per block (`Execution::checkpointing`), not
    // Burn's per-op strategy, which keeps every op with a frozen operand (LoRA) and saves nothing.
    let device = plain.clone().autodiff();
    let compute = selected[0].precision(&config.dtype)?;
    let unet_dir = component_dir(&config.model, family.denoiser_folder())?;
    let (_, unet_config) = crate::models::config::read_config::<serde_json::Value>(&unet_dir)?;
    let mut optimizer = Optimizer::new(config.optimizer.build()?);
    let base_dtype = if config.lora.is_some() { compute } else { DType::F32 };
    let place = Placement { unet_dir: &unet_dir, plain: &plain, device: &device, dtype: base_dtype };
    let (unet, start) = policy(config, how, &place, &mut optimizer, selected.len())?;
    let reference = if with_reference { Some(M::load_dir(&unet_dir, &plain, DType::F32, None, None)?) } else { None };
    let mut ranks = vec![Rank { backend: backends[0], plain, device, unet, reference, optimizer }];
    for s in &selected[1..] {
        let first = &ranks[0];
        let device = s.device.clone().autodiff();
        ranks.push(Rank {
            backend: s.backend,
            plain: s.device.clone(),
            unet: replicate(&first.unet, &device),
            reference: first.reference.clone().map(|r| r.to_device(&s.device)),
            optimizer: replicate_optimizer(&first.optimizer, &s.device),
            device,
        });
    }
    let vae_dir = component_dir(&config.model, "vae").ok();
    Ok(Models { base_dtype, objective, ranks, reduction, compute, unet_config, unet_dir, vae_dir, start })
}

/// `params` with the objective's defaults for `method` where the caller set none
/// (`ObjectiveName::method_defaults`): `mapo train`, `forward train-step` and `bench` alike.
pub fn method_params(method: &str, objective: crate::objective::ObjectiveName, mut params: Params) -> Params {
    for (k, v) in objective.method_defaults(method) {
        params = params.with_default(k, *v);
    }
    params
}

/// The policy: fresh (LoRA adapters drawn from the seeded device), or the checkpoint's
/// weights (or adapters on the base) with the optimizer state restored.
/// Where the policy is read from and put: its folder, the plain and autodiff devices, the
/// dtype of its frozen base.
struct Placement<'a> {
    unet_dir: &'a Path,
    plain: &'a Device,
    device: &'a Device,
    dtype: DType,
}

fn policy<M: TrainDenoiser>(
    config: &TrainConfig,
    how: &Start,
    place: &Placement,
    optimizer: &mut Optimizer,
    ranks_n: usize,
) -> Result<(M, StartState)> {
    let Placement { unet_dir, plain, device, dtype } = *place;
    // `--resume latest` of a run killed before its first checkpoint starts it afresh (the
    // folder's partial files are discarded once it is claimed).
    let which = how.resume.as_deref().filter(|w| !(*w == "latest" && outdir::holds_partial_run(&config.output_dir)));
    let Some(which) = which else {
        // Fresh LoRA adapters are drawn from the device's generator: seed it.
        plain.seed(config.seed);
        device.seed(config.seed);
        let unet = M::load_dir(unet_dir, device, dtype, config.lora.clone(), None)?;
        return Ok((unet, StartState { step: 0, dir: None, bad_in_a_row: 0, cursor: 0 }));
    };
    let dir = checkpoint::resolve(&config.output_dir, which)?;
    let (state, unet_ckpt) = checkpoint::load(&dir, optimizer, plain)?;
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
            M::load_dir(unet_dir, device, dtype, Some(lora.clone()), adapters)?
        }
        None => M::load_dir(&unet_ckpt, device, DType::F32, None, None)?,
    };
    Ok((unet, StartState { step: state.step, dir: Some(dir), bad_in_a_row: state.bad_in_a_row, cursor }))
}

/// Settings the method cannot train with.
fn check_method(config: &TrainConfig, method: &Method, ranks_n: usize) -> Result<()> {
    if config.reference_cache && !method.uses_reference() {
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
    Ok(())
}

/// The run's data (a parquet source is first cached into `<output_dir>/cache`), checked
/// against the method (pairs or labelled images), the UNet and the VAE.
pub fn open_data<M: TrainDenoiser>(
    config: &TrainConfig,
    method: &Method,
    unet_config: &serde_json::Value,
    vae_dir: Option<&Path>,
) -> Result<PairSource> {
    let data_path = if crate::data::cache::is_parquet(&config.data) {
        crate::data::cache::ensure(
            &config.model,
            &config.data,
            &config.output_dir.join("cache"),
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
    M::check_data(&data, &data_path, unet_config)?;
    if let Some(dir) = vae_dir {
        data.check_vae(&crate::models::config::read_config::<serde_json::Value>(dir)?.1)?;
    }
    Ok(data)
}

/// Every input has loaded: writes the run's `config.toml` and cuts `metrics.jsonl` back to
/// the resumed step (or removes it); returns its path.
pub fn write_run_state(config: &TrainConfig, start_step: usize) -> Result<PathBuf> {
    let out = &config.output_dir;
    let metrics_path = out.join("metrics.jsonl");
    write_atomic(&out.join("config.toml"), toml::to_string_pretty(config)?.as_bytes())?;
    if start_step > 0 {
        super::run::truncate_metrics(&metrics_path, start_step)?;
    } else {
        let _ = std::fs::remove_file(&metrics_path);
    }
    Ok(metrics_path)
}
