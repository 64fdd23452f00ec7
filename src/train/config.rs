//! `mapo train` configuration: a TOML file, overridable with `--set key=value`.
//! Unknown keys are an error; diffusers'/accelerate's names are accepted too
//! (`config_names`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::config_names::{canonical_key, canonicalize, check_known};
use super::lr::LrSchedule;
use super::optim::{OptimizerConfig, OptimizerName};
use crate::objective::{FlowConfig, Objective, ObjectiveName};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A diffusers pipeline folder (its `unet/` is trained).
    pub model: PathBuf,
    /// A pairs file (safetensors; see `train::data`), a cache folder or parquet; online
    /// runs (`[online]`) need none.
    #[serde(default)]
    pub data: PathBuf,
    /// Where the run writes its config, metrics, checkpoints and final model.
    pub output_dir: PathBuf,
    /// sft, dpo or mapo.
    pub method: String,
    /// Method parameters (e.g. `beta = 0.1`).
    #[serde(default)]
    pub method_params: BTreeMap<String, f64>,
    /// Optimizer steps.
    pub steps: usize,
    /// Pairs per micro-batch.
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accumulation: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub optimizer: OptimizerSection,
    /// constant, constant_with_warmup, linear or cosine.
    #[serde(default = "constant_with_warmup")]
    pub lr_schedule: LrSchedule,
    #[serde(default)]
    pub warmup_steps: usize,
    /// Global gradient-norm clipping (0 = off).
    #[serde(default = "one_f")]
    pub max_grad_norm: f64,
    /// Save a checkpoint every N steps (0 = only at the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// How many checkpoints to keep.
    #[serde(default = "two")]
    pub keep_checkpoints: usize,
    /// Stop after this many non-finite losses in a row (their updates are skipped).
    #[serde(default = "five")]
    pub max_bad_steps: usize,
    #[serde(default)]
    pub device: Option<String>,
    /// Data parallel: one rank per device (`["cuda:0", "cuda:1"]`, or `["flex", "flex"]`),
    /// `batch_size` pairs per rank. Empty: the single `device`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// DPO-type methods: compute the frozen reference's errors for every pair training will
    /// draw before the first step, then free the reference model.
    #[serde(default)]
    pub reference_cache: bool,
    /// A cache's shuffle buffer: its shards are read in a seeded order, this many at a time,
    /// and the pairs of those shards shuffled together (memory ∝ this, not the dataset).
    #[serde(default = "four")]
    pub shuffle_shards: usize,
    /// Train LoRA adapters instead of the full UNet (`[lora] rank = 8`, optional `alpha`,
    /// `targets`).
    #[serde(default)]
    pub lora: Option<crate::models::lora::LoraConfig>,
    /// Generate validation samples every N steps (0 = never) into `validation/step-N/`.
    #[serde(default)]
    pub validation_every: usize,
    /// How many prompts (the first pairs of the data file) to sample.
    #[serde(default = "two")]
    pub validation_prompts: usize,
    #[serde(default = "twenty")]
    pub validation_steps: usize,
    #[serde(default = "five_f")]
    pub validation_guidance: f64,
    /// FLUX.1 [dev]: the embedded guidance scale the transformer is called with in training
    /// (and validation samples, instead of `validation_guidance`), as diffusers' FLUX LoRA script's `guidance_scale`; default 3.5.
    /// [schnell] embeds none and ignores it; other families refuse it.
    #[serde(default)]
    pub guidance: Option<f64>,
    /// Block-level gradient checkpointing: the backward pass reruns each block (UNet
    /// resnets and transformer blocks, SD3's joint blocks) from its saved input instead of
    /// keeping every activation.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// With a `mapo cache` as data: draw each batch's latents from the cached VAE
    /// distribution instead of taking its mean.
    #[serde(default)]
    pub sample_latents: bool,
    /// When `data` is parquet: the transforms of the cache built in `<output_dir>/cache`
    /// before training (`resolution`, `random_crop`, `flip`, `caption_dropout`).
    #[serde(default)]
    pub data_transform: crate::data::transform::TransformConfig,
    /// When `data` is parquet: how its rows are read (`unpaired = true` for one image and a
    /// label per row; `[data_read.columns]` for other column names; `keep_ties`, `max_samples`).
    #[serde(default)]
    pub data_read: crate::data::parquet::ReadOptions,
    /// Compute precision: f32, or bf16/f16 with f32 master weights and optimizer state.
    #[serde(default = "f32_name")]
    pub dtype: String,
    /// The training objective: `epsilon` (ε-prediction on the DDPM schedule, SDXL) or `flow`
    /// (flow matching, settings in `[flow]`).
    #[serde(default, skip_serializing_if = "ObjectiveName::is_epsilon")]
    pub objective: ObjectiveName,
    /// Flow matching's σ grid shift and density (`objective = "flow"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowConfig>,
    /// What the finished run writes: `diffusers` (its `unet/` folder, always written) and
    /// `single-file` (`model.safetensors`: the whole pipeline with the trained UNet in
    /// Stability's layout, for A1111 and ComfyUI), e.g. `export = ["diffusers", "single-file"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export: Vec<ExportFormat>,
    /// The single file's storage dtype (f16, bf16 or f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_dtype: Option<String>,
    /// With `model` an SDXL single file of another architecture than SDXL base: a diffusers
    /// folder of it (configs, tokenizers, scheduler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_config: Option<PathBuf>,
    /// `[online]`: the run samples, scores and trains on its own images (`grpo`, `nft`, or
    /// online pairs for a pair method); `data` then only feeds validation prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<super::online_config::OnlineConfig>,
}

/// A format the finished run is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    Diffusers,
    SingleFile,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSection {
    #[serde(default = "adamw")]
    pub name: OptimizerName,
    #[serde(default = "lr")]
    pub lr: f64,
    #[serde(default = "beta1")]
    pub beta1: f64,
    #[serde(default = "beta2")]
    pub beta2: f64,
    #[serde(default = "eps")]
    pub eps: f64,
    /// Default: 1e-2 for adamw, 0 for adafactor; sgd takes none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
}

impl OptimizerSection {
    /// The optimizer this section describes (the one builder, shared with the CLI's).
    pub fn build(&self) -> Result<OptimizerConfig> {
        OptimizerConfig::build(self.name, self.lr, (self.beta1, self.beta2, self.eps), self.weight_decay)
    }
}

impl Default for OptimizerSection {
    fn default() -> Self {
        Self { name: adamw(), lr: lr(), beta1: beta1(), beta2: beta2(), eps: eps(), weight_decay: None }
    }
}

fn f32_name() -> String {
    "f32".into()
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn five() -> usize {
    5
}
fn four() -> usize {
    4
}
fn twenty() -> usize {
    20
}
fn five_f() -> f64 {
    5.0
}
fn one_f() -> f64 {
    1.0
}
fn adamw() -> OptimizerName {
    OptimizerName::Adamw
}
fn constant_with_warmup() -> LrSchedule {
    LrSchedule::ConstantWithWarmup
}
fn lr() -> f64 {
    1e-5
}
fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}

impl TrainConfig {
    /// Every optional field at its default, with empty paths, method `sft` and 1 step:
    /// for code that fills in a config (the experiment runner).
    pub fn defaults() -> Self {
        toml::from_str("model = \"\"\ndata = \"\"\noutput_dir = \"\"\nmethod = \"sft\"\nsteps = 1").expect("defaults")
    }

    /// Reads `path` and applies `overrides` (`a.b=value`, value parsed as TOML, else a string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut value: toml::Value =
            toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
        let origin = path.display().to_string();
        if let Some(t) = value.as_table_mut() {
            canonicalize(t, &origin)?;
        }
        let file_method = value.get("method").cloned();
        let mut from_set = Vec::new();
        for o in overrides {
            // `--set learning_rate=1e-4` on a file with `[optimizer] lr`: the override wins.
            let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim();
            let canonical = canonical_key(key);
            if canonical != key {
                remove_path(&mut value, &canonical);
            }
            set(&mut value, o)?;
            if let Some(t) = value.as_table_mut() {
                canonicalize(t, &format!("--set {o}"))?;
            }
            from_set.push(key.split('.').next().unwrap_or(key).to_string());
        }
        if let Some(t) = value.as_table_mut() {
            let known = known_keys()?;
            let blame = |k: &str| if from_set.iter().any(|s| s == k) { format!("--set {k}") } else { origin.clone() };
            let sections = sections()?;
            check_known(t, &known.0, &sections, &blame)?;
            if let Some(opt) = t.get("optimizer").and_then(|o| o.as_table()) {
                check_known(opt, &known.1, &[], &|k| format!("{} [optimizer]", blame(k)))?;
            }
        }
        // `--set method=dpo` on a MaPO file: the file's parameters were MaPO's (its β of 0.1
        // would be absurd for DPO), so the new method starts from its own defaults.
        let key = |o: &String| o.split_once('=').map(|(k, _)| k.trim().to_string()).unwrap_or_default();
        let sets_params = overrides.iter().any(|o| key(o).starts_with("method_params"));
        if value.get("method") != file_method.as_ref()
            && !sets_params
            && let Some(t) = value.as_table_mut()
            && t.get("method_params").and_then(|p| p.as_table()).is_some_and(|p| !p.is_empty())
        {
            let dropped = t.remove("method_params").expect("checked");
            eprintln!(
                "note: --set method changed the method; the file's method_params {dropped} were for {} and are not \
                 used (set the new method's with --set method_params.NAME=VALUE)",
                file_method.map_or("another method".to_string(), |m| m.to_string())
            );
        }
        let with_sets =
            if overrides.is_empty() { String::new() } else { format!(" with --set {}", overrides.join(", --set ")) };
        let config: TrainConfig =
            value.try_into().with_context(|| format!("{}{with_sets}: invalid config", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// The objective this config trains with.
    pub fn objective(&self) -> Result<Objective> {
        Objective::new(self.objective, self.flow.as_ref())
    }

    pub fn validate(&self) -> Result<()> {
        // Upper bounds catch typos (an extra digit) before they allocate or run for years.
        ensure!((1..=100_000_000).contains(&self.steps), "steps {} must be in 1..=100000000", self.steps);
        ensure!((1..=4096).contains(&self.batch_size), "batch_size {} must be in 1..=4096", self.batch_size);
        ensure!(self.devices.len() <= 256, "devices: {} entries; at most 256 ranks", self.devices.len());
        ensure!(
            (1..=100_000).contains(&self.shuffle_shards),
            "shuffle_shards {} must be in 1..=100000",
            self.shuffle_shards
        );
        ensure!(
            (1..=65536).contains(&self.grad_accumulation),
            "grad_accumulation {} must be in 1..=65536",
            self.grad_accumulation
        );
        ensure!(self.keep_checkpoints > 0, "keep_checkpoints must be > 0");
        if let Some(d) = &self.export_dtype {
            d.parse::<crate::device::Precision>().with_context(|| format!("export_dtype {d:?}"))?;
        }
        let o = &self.optimizer;
        // Fine-tuning rates are 1e-8..1e-2; above 1 every optimizer here diverges at once.
        ensure!(o.lr.is_finite() && o.lr > 0.0 && o.lr <= 1.0, "optimizer.lr {:e} must be in (0, 1]", o.lr);
        ensure!((0.0..1.0).contains(&o.beta1), "optimizer.beta1 {} must be in [0, 1)", o.beta1);
        ensure!((0.0..1.0).contains(&o.beta2), "optimizer.beta2 {} must be in [0, 1)", o.beta2);
        ensure!(o.eps.is_finite() && o.eps > 0.0, "optimizer.eps {} must be > 0", o.eps);
        if let Some(wd) = o.weight_decay {
            ensure!(
                wd.is_finite() && (0.0..1.0).contains(&(wd * o.lr)),
                "optimizer.weight_decay {wd} must be ≥ 0 with weight_decay × lr < 1"
            );
        }
        o.build()?;
        ensure!(
            self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0,
            "max_grad_norm {} must be ≥ 0 (0 = off)",
            self.max_grad_norm
        );
        for (k, v) in &self.method_params {
            ensure!(v.is_finite(), "method_params.{k} = {v} is not a finite number");
        }
        ensure!(
            self.validation_guidance.is_finite() && self.validation_guidance >= 0.0,
            "validation_guidance {} must be ≥ 0",
            self.validation_guidance
        );
        ensure!(self.validation_every == 0 || self.validation_steps > 0, "validation_steps must be > 0");
        self.data_transform.validate()?;
        self.dtype.parse::<crate::device::Precision>()?;
        ensure!(
            self.flow.is_none() || self.objective == ObjectiveName::Flow,
            "[flow] is set but objective is {:?}: add objective = \"flow\" or remove [flow]",
            self.objective.as_str()
        );
        self.objective()?;
        if let Some(l) = &self.lora {
            ensure!((1..=4096).contains(&l.rank), "lora.rank {} must be in 1..=4096", l.rank);
            ensure!(!l.targets.is_empty(), "lora.targets is empty");
        }
        match &self.online {
            Some(online) => online.validate(&self.method)?,
            None => ensure!(
                !crate::losses::online::OnlineMethod::is_online(&self.method),
                "method {} samples its own training data: add an [online] section (iterations, group_size, rewards, \
                 ...; see docs/training.md)",
                self.method
            ),
        }
        ensure!(
            self.online.is_some() || !self.data.as_os_str().is_empty(),
            "data is missing: a pairs file, a `mapo cache` folder or parquet files (only [online] runs need none)"
        );

        Ok(())
    }
}

/// Keys whose change alters the math of a run: resuming with any of them changed would
/// continue one run with another's settings.
const MATH_KEYS: &[&str] = &[
    "model",
    "model_config",
    "data",
    "method",
    "method_params",
    "batch_size",
    "grad_accumulation",
    "seed",
    "optimizer",
    "lr_schedule",
    "warmup_steps",
    "max_grad_norm",
    "lora",
    "dtype",
    "sample_latents",
    "data_transform",
    "shuffle_shards",
    "objective",
    "flow",
    "guidance",
    "online",
];

/// The math-changing keys that differ between the config a run started with and `now`,
/// as `key: saved → now` lines.
pub fn math_changes(saved: &TrainConfig, now: &TrainConfig) -> Result<Vec<String>> {
    let (a, b) = (toml::Value::try_from(saved)?, toml::Value::try_from(now)?);
    let show = |v: Option<&toml::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
    Ok(MATH_KEYS
        .iter()
        .filter(|k| a.get(**k) != b.get(**k))
        .map(|k| format!("{k}: {} → {}", show(a.get(*k)), show(b.get(*k))))
        .collect())
}

/// The sections of a train config with their keys (for "belongs in [lora] as rank").
pub fn sections() -> Result<Vec<(&'static str, Vec<String>)>> {
    fn keys<T: Serialize>(value: &T) -> Result<Vec<String>> {
        Ok(toml::Value::try_from(value)?.as_table().map(|t| t.keys().cloned().collect()).unwrap_or_default())
    }
    let lora = crate::models::lora::LoraConfig { alpha: Some(1.0), ..crate::models::lora::LoraConfig::new(1) };
    let mut optimizer = keys(&OptimizerSection::default())?;
    optimizer.push("weight_decay".into());
    Ok(vec![
        ("lora", keys(&lora)?),
        ("optimizer", optimizer),
        ("data_transform", keys(&crate::data::transform::TransformConfig::default())?),
        ("data_read", keys(&crate::data::parquet::ReadOptions::default())?),
        ("flow", keys(&FlowConfig::default())?),
    ])
}

/// The top-level keys of a train config, and those of `[optimizer]`.
pub fn known_keys() -> Result<(Vec<String>, Vec<String>)> {
    let defaults = toml::Value::try_from(TrainConfig::defaults())?;
    let table = defaults.as_table().context("a table")?;
    // Optional sections are absent from the defaults' serialisation.
    let mut top: Vec<String> = table.keys().cloned().collect();
    top.extend(
        ["device", "lora", "objective", "flow", "export", "export_dtype", "model_config", "guidance", "online"]
            .map(String::from),
    );
    let mut opt: Vec<String> =
        table.get("optimizer").and_then(|o| o.as_table()).map(|t| t.keys().cloned().collect()).unwrap_or_default();
    opt.push("weight_decay".into());
    Ok((top, opt))
}

fn remove_path(root: &mut toml::Value, key: &str) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = root;
    for part in &parts[..parts.len() - 1] {
        match node.get_mut(*part) {
            Some(next) => node = next,
            None => return,
        }
    }
    if let Some(t) = node.as_table_mut() {
        t.remove(parts[parts.len() - 1]);
    }
}

pub fn set(root: &mut toml::Value, assignment: &str) -> Result<()> {
    let Some((key, raw)) = assignment.split_once('=') else { bail!("--set {assignment:?}: expected key=value") };
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut node = root;
    let parts: Vec<&str> = key.trim().split('.').collect();
    for part in &parts[..parts.len() - 1] {
        let table = node.as_table_mut().with_context(|| format!("--set {key}: {part} is not a table"))?;
        node = table.entry(part.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = node.as_table_mut().with_context(|| format!("--set {key}: parent is not a table"))?;
    table.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}
