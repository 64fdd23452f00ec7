//! Runs an experiment's runs one after another into `<runs_dir>/<name>/<run>/`.
//! A run with a `summary.json` is finished and skipped; one with checkpoints resumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use super::config::{ExperimentConfig, PlannedRun};
use super::evaluator::Evaluator;
use super::toy::pretrain::{self as toy, Variant};
use crate::device::select;
use crate::eval::metrics::Metrics;
use crate::models::io::write_atomic;
use crate::models::unet::UNet2DConditionModel;
use crate::objective::ObjectiveName;
use crate::toy::model::Conditioner;
use crate::train::checkpoint;
use crate::train::run::Start;
pub use crate::util::read_jsonl;
use crate::util::{append_jsonl, reset_peak_rss};

/// What the report reads from a finished run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub experiment: String,
    pub run: String,
    /// A method name, or `reference` for the model before fine-tuning.
    pub method: String,
    pub varied: BTreeMap<String, String>,
    pub seed: u64,
    pub backend: String,
    pub dtype: String,
    pub steps: usize,
    pub wall_s: f64,
    /// Median optimizer-step time.
    pub step_time_s: Option<f64>,
    /// Peak device memory where the backend reports it, else the process's peak RSS
    /// during the run.
    pub peak_memory_bytes: Option<u64>,
    pub memory_kind: String,
    pub final_loss: Option<f64>,
    pub eval: Option<Metrics>,
    /// The training objective (absent: ε-prediction, as every summary before flow had it).
    #[serde(default, skip_serializing_if = "ObjectiveName::is_epsilon")]
    pub objective: ObjectiveName,
}

pub fn experiment_dir(config: &ExperimentConfig) -> PathBuf {
    config.runs_dir.join(&config.name)
}

/// How `mapo experiment` was invoked: what a child process needs to redo one run.
pub struct Invocation<'a> {
    pub file: &'a Path,
    pub overrides: &'a [String],
    pub device: Option<&'a str>,
    /// Runs at once (child processes when > 1).
    pub jobs: usize,
}

/// Runs every planned run that has not finished; returns the folders the report reads:
/// the reference evaluations, then the runs in plan order.
pub fn run_all(base: &ExperimentConfig, runs: &[PlannedRun], how: &Invocation) -> Result<Vec<PathBuf>> {
    let exp = experiment_dir(base);
    std::fs::create_dir_all(&exp).with_context(|| format!("creating {}", exp.display()))?;
    let total = runs.len();
    let mut pending = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let dir = exp.join(&run.name);
        check_identity(&dir, run)?;
        if dir.join("summary.json").is_file() {
            eprintln!("[{}/{total}] {}: finished, skipped", i + 1, run.name);
        } else {
            pending.push(run);
        }
    }
    // What runs share (the toy reference, generated pairs, caches, the reference's scores)
    // is made once, before any run starts: concurrent runs only read it.
    for run in &pending {
        prepare(&exp, run, how.device, false)?;
    }
    if how.jobs <= 1 || pending.len() <= 1 {
        for (k, run) in pending.iter().enumerate() {
            eprintln!("[{}/{}] {}", k + 1, pending.len(), run.name);
            execute(&exp, run, &exp.join(&run.name), how.device)?;
        }
    } else {
        super::jobs::run_concurrently(&exp, &pending, how)?;
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in runs.iter().filter_map(|r| reference_summary_dir(&exp, r)) {
        if d.join("summary.json").is_file() && !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs.extend(runs.iter().map(|r| exp.join(&r.name)));
    Ok(dirs)
}

/// `--only NAME` (a child of `--jobs`): runs that one planned run, writes no report.
pub fn run_one(base: &ExperimentConfig, runs: &[PlannedRun], name: &str, device: Option<&str>) -> Result<()> {
    let exp = experiment_dir(base);
    let run = runs.iter().find(|r| r.name == name).with_context(|| format!("--only {name}: no such planned run"))?;
    let dir = exp.join(&run.name);
    check_identity(&dir, run)?;
    if dir.join("summary.json").is_file() {
        return Ok(());
    }
    execute(&exp, run, &dir, device)
}

/// What makes a run this run: everything of the experiment that reaches it (other
/// methods' parameters, the method and seed lists and the sweep itself do not).
fn identity(run: &PlannedRun) -> serde_json::Value {
    let c = &run.config;
    serde_json::json!({
        "method": run.method, "seed": run.seed, "model": c.model, "data": c.data, "pretrain": c.pretrain,
        "train": c.train, "method_params": c.method_params.get(&run.method), "eval": c.eval,
        "online": super::config::split_method(&run.method).1.then_some(&c.online),
    })
}

const IDENTITY: &str = "identity.json";

/// A run folder made with other settings (an edited file, a `--set`) is refused, not
/// skipped or resumed: its results would be reported under the new settings.
fn check_identity(dir: &Path, run: &PlannedRun) -> Result<()> {
    let changed = changed_keys(dir, &identity(run))?;
    anyhow::ensure!(
        changed.is_empty(),
        "{}: this run was made with other settings (changed: {}); remove the folder to redo it, or give the \
         experiment another name (--set name=...) to keep both",
        dir.display(),
        changed.join(", ")
    );
    Ok(())
}

/// The keys of `now` whose values differ from the folder's `identity.json` (none when the
/// folder has none yet, or predates it).
fn changed_keys(dir: &Path, now: &serde_json::Value) -> Result<Vec<String>> {
    let path = dir.join(IDENTITY);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Vec::new()) };
    let saved: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not an identity file", path.display()))?;
    let keys = now.as_object().expect("an object").keys();
    Ok(keys.filter(|k| saved.get(k.as_str()) != now.get(k.as_str())).cloned().collect())
}

/// What the reference row depends on: the model (and the toy's pretraining and held
/// pairs), and how it is scored.
fn reference_identity(c: &ExperimentConfig) -> serde_json::Value {
    let toy = c.is_toy();
    serde_json::json!({
        "model": c.model, "eval": c.eval,
        "pretrain": toy.then_some(&c.pretrain), "data": toy.then_some(&c.data),
    })
}

/// A reference scored with other settings (an edited `[eval]`, another pretraining) is
/// refused rather than reported beside runs it does not belong to. Folders from before
/// this check have no identity and are accepted.
fn check_reference(dir: &Path, c: &ExperimentConfig) -> Result<()> {
    let changed = changed_keys(dir, &reference_identity(c))?;
    anyhow::ensure!(
        changed.is_empty(),
        "{}: the reference was scored with other settings (changed: {}); remove the folder to score it again \
         (a sweep over pretrain.* or eval.* needs one experiment per value)",
        dir.display(),
        changed.join(", ")
    );
    Ok(())
}

/// Where the model before fine-tuning is scored: one folder per generated data variant
/// (the toy), `reference` for a diffusers model with a prompt suite.
fn reference_summary_dir(exp: &Path, run: &PlannedRun) -> Option<PathBuf> {
    let c = &run.config;
    match &c.data.generated {
        Some(variant) => Some(exp.join(format!("reference-{variant}"))),
        None if !c.is_toy() && c.eval.has_suite() => Some(exp.join("reference")),
        None => None,
    }
}

/// The model folder and the pairs file of a run (building the toy reference and the
/// generated pairs on first use).
fn inputs(exp: &Path, c: &ExperimentConfig, device: Option<&str>) -> Result<(PathBuf, PathBuf)> {
    crate::models::folder::set_single_file_configs(c.model.config.as_deref());
    let model = match &c.model.path {
        Some(p) => p.clone(),
        None => toy::reference(&c.runs_dir.join("_cache"), &c.pretrain, device)?.0,
    };
    let data = match (&c.data.pairs, &c.data.generated) {
        (Some(p), _) => p.clone(),
        (None, None) if c.data.parquet.is_some() => {
            let files = c.data.parquet.as_ref().expect("checked");
            let out = exp.join("_data").join(format!("cache-{}", c.data.transform.resolution));
            crate::data::cache::ensure(&model, files, &out, &c.data.transform, &c.data.read, c.data.seed, device)?
        }
        (None, Some(v)) => {
            let variant = Variant::parse(v)?;
            let path =
                exp.join("_data").join(format!("{v}-seed{}-x{}.safetensors", c.data.seed, c.data.pairs_per_subject));
            if !path.is_file() {
                std::fs::create_dir_all(path.parent().expect("parent"))?;
                let cond = Conditioner::load(&model, &burn::tensor::Device::default())?;
                toy::write_pairs(&path, &variant.rows(c.data.seed, c.data.pairs_per_subject), &cond)?;
            }
            path
        }
        (None, None) => unreachable!("checked when planning"),
    };
    Ok((model, data))
}

/// A run's inputs, ready: its model and data folders (built on first use), its evaluator,
/// and the reference's scores (computed on first use) as the first evaluation line.
struct Prepared {
    model: PathBuf,
    data: PathBuf,
    evaluator: Option<Evaluator>,
    start_line: Option<Metrics>,
    backend: String,
    plain: burn::tensor::Device,
}

/// `for_run`: the run itself follows (else only what runs share is made, and the evaluator
/// is built only when the reference has not been scored yet: reward models load slowly).
fn prepare(exp: &Path, run: &PlannedRun, device: Option<&str>, for_run: bool) -> Result<Prepared> {
    let c = &run.config;
    let (model, data) = inputs(exp, c, device)?;
    let requested =
        device.map(String::from).or_else(|| c.train.get("device").and_then(|d| d.as_str()).map(String::from));
    let selected = select(requested.as_deref())?;
    let backend = selected.backend.name().to_string();
    let plain = selected.device.clone();

    if let Some(d) = reference_summary_dir(exp, run) {
        check_reference(&d, c)?;
    }
    let family = crate::family::Family::detect(&model)?;
    // The evaluator samples with a UNet; other families are scored with `mapo generate` +
    // `mapo score` for now.
    anyhow::ensure!(
        c.eval.prompts.is_none() || family == crate::family::Family::Sdxl,
        "{}: [eval] samples SDXL UNets only for now; remove [eval] for this {} model (its runs still train and \
         report their losses), and score its outputs with `mapo generate` + `mapo score`",
        model.display(),
        family.name()
    );
    let scored = reference_summary_dir(exp, run).is_none_or(|d| d.join("summary.json").is_file());
    let evaluator = if for_run || !scored {
        let rewards = c.online.as_ref().map(|o| &o.rewards);
        Evaluator::new(c.is_toy(), &model, &data, &c.eval, &c.objective()?, rewards, &plain)?
    } else {
        None
    };
    let mut start_line = None;
    if let (Some(ev), Some(ref_dir)) = (&evaluator, reference_summary_dir(exp, run)) {
        let summary = ref_dir.join("summary.json");
        if !summary.is_file() {
            eprintln!("scoring the reference model on {}", data.display());
            let unet_dir = crate::models::folder::component_dir(&model, "unet")?;
            let (unet, _) = UNet2DConditionModel::from_dir(&unet_dir, &plain, DType::F32)?;
            let t0 = Instant::now();
            let (metrics, samples) = ev.evaluate(&unet, 0, true)?;
            std::fs::create_dir_all(&ref_dir)?;
            samples.save(&ref_dir)?;
            let s = RunSummary {
                experiment: c.name.clone(),
                run: ref_dir.file_name().expect("name").to_string_lossy().into(),
                method: "reference".into(),
                varied: run
                    .varied
                    .iter()
                    .filter(|(k, _)| *k == "generated")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                seed: c.pretrain.seed,
                backend: backend.clone(),
                dtype: "f32".into(),
                steps: 0,
                wall_s: t0.elapsed().as_secs_f64(),
                step_time_s: None,
                peak_memory_bytes: None,
                memory_kind: "none".into(),
                final_loss: None,
                eval: Some(metrics),
                objective: c.pretrain.objective,
            };
            write_atomic(&ref_dir.join(IDENTITY), serde_json::to_string_pretty(&reference_identity(c))?.as_bytes())?;
            write_atomic(&summary, serde_json::to_string_pretty(&s)?.as_bytes())?;
        }
        let s: RunSummary = serde_json::from_str(&std::fs::read_to_string(&summary)?)?;
        start_line = s.eval;
    }
    Ok(Prepared { model, data, evaluator, start_line, backend, plain })
}

/// Runs one run.
fn execute(exp: &Path, run: &PlannedRun, dir: &Path, device: Option<&str>) -> Result<()> {
    let c = &run.config;
    let Prepared { model, data, evaluator, start_line, backend, plain } = prepare(exp, run, device, true)?;
    let mut train = c.train_config(&run.method, run.seed, &model, &data, dir)?;
    if let Some(d) = device {
        train.device = Some(d.to_string());
    }
    let family = crate::family::Family::detect(&model)?;
    if family != crate::family::Family::Sdxl {
        // Recorded in the summary and report as the run trains it (`train` sets it too).
        train.objective = family.objective();
    }

    std::fs::create_dir_all(dir)?;
    write_atomic(&dir.join(IDENTITY), serde_json::to_string_pretty(&identity(run))?.as_bytes())?;
    let eval_path = dir.join("eval.jsonl");
    if let Some(m) = &start_line
        && !eval_path.is_file()
    {
        write_atomic(&eval_path, format!("{}\n", serde_json::to_string(m)?).as_bytes())?;
    }
    let resume = checkpoint::list(dir).map(|l| !l.is_empty()).unwrap_or(false);
    if !resume {
        crate::train::outdir::discard_partial(dir)?;
    }
    reset_peak_rss();
    // Wall time of the earlier segments of a run that was interrupted and resumed.
    let wall_path = dir.join("wall.json");
    let earlier = if resume { read_wall(&wall_path) } else { 0.0 };
    let t0 = Instant::now();
    // Offline runs count optimizer steps and are scored every `[eval] every`; online runs
    // count iterations and are scored every `[online] eval_every` (0: the last only).
    let online = train.online.is_some();
    let (every, steps) = match &train.online {
        Some(o) => (o.eval_every, o.iterations),
        None => (c.eval.every.max(1), train.steps),
    };
    let mut last_eval: Option<Metrics> = None;
    let mut hook = |step: usize, unet: &UNet2DConditionModel| -> Result<()> {
        write_wall(&wall_path, earlier + t0.elapsed().as_secs_f64())?;
        let Some(ev) = &evaluator else { return Ok(()) };
        if step != steps && (every == 0 || !step.is_multiple_of(every)) {
            return Ok(());
        }
        last_eval = Some(score(ev, &unet.valid(), step, step == steps, dir)?);
        Ok(())
    };
    let start = Start::resume(resume.then_some("latest"));
    // Other families have no evaluator (refused in `prepare`): they train and report losses.
    let final_loss = match (family == crate::family::Family::Sdxl, online) {
        (true, false) => crate::train::run::train_with(&train, &start, &mut hook)?,
        (true, true) => crate::online::run::train_with(&train, &start, &mut hook)?,
        (false, false) => crate::train::run::train(&train, &start)?,
        (false, true) => crate::online::run::train(&train, &start)?,
    };
    // Resumed from the last checkpoint, no step ran: score the saved final model.
    if let (Some(ev), None) = (&evaluator, &last_eval) {
        let (unet, _) = UNet2DConditionModel::from_dir(&dir.join("unet"), &plain, DType::F32)?;
        last_eval = Some(score(ev, &unet, steps, true, dir)?);
    }

    let wall_s = earlier + t0.elapsed().as_secs_f64();
    write_wall(&wall_path, wall_s)?;
    let metrics = read_jsonl(&dir.join("metrics.jsonl"));
    let (median_step, device_peak) = step_stats(&metrics);
    let (peak, kind) = match device_peak {
        Some(p) => (Some(p), "device"),
        None => (crate::util::peak_rss(), "rss"),
    };
    let summary = RunSummary {
        experiment: c.name.clone(),
        run: run.name.clone(),
        method: run.method.clone(),
        varied: run.varied.clone(),
        seed: run.seed,
        backend,
        dtype: train.dtype.clone(),
        steps,
        wall_s,
        step_time_s: median_step,
        peak_memory_bytes: peak,
        memory_kind: kind.into(),
        final_loss: Some(final_loss),
        eval: last_eval,
        objective: train.objective,
    };
    write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    eprintln!("{}: {:.1} s", run.name, wall_s);
    Ok(())
}

/// From a run's metric lines: the median optimizer-step time, and the peak device memory
/// where the backend reported it.
pub fn step_stats(metrics: &[serde_json::Value]) -> (Option<f64>, Option<u64>) {
    let mut times: Vec<f64> = metrics.iter().filter_map(|m| m["step_time_s"].as_f64()).collect();
    times.sort_by(f64::total_cmp);
    let peak = metrics.iter().filter_map(|m| m["peak_memory_reserved_bytes"].as_u64()).max();
    (times.get(times.len() / 2).copied(), peak)
}

/// The wall time a run has spent so far, over all its segments (0 when none was recorded).
fn read_wall(path: &Path) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["wall_s"].as_f64())
        .unwrap_or(0.0)
}

fn write_wall(path: &Path, wall_s: f64) -> Result<()> {
    write_atomic(path, serde_json::json!({ "wall_s": wall_s }).to_string().as_bytes())
}

/// Scores `unet` at `step`, appends the line to the run's eval.jsonl, and keeps the
/// samples when `keep_samples` (the last step).
fn score(ev: &Evaluator, unet: &UNet2DConditionModel, step: usize, keep_samples: bool, dir: &Path) -> Result<Metrics> {
    let (m, samples) = ev.evaluate(unet, step, keep_samples)?;
    append_jsonl(&dir.join("eval.jsonl"), &m)?;
    if keep_samples {
        samples.save(dir)?;
    }
    Ok(m)
}
