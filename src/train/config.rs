//! `mapo train` configuration: a TOML file, overridable with `--set key=value`.
//! Unknown keys are an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A diffusers pipeline folder (its `unet/` is trained).
    pub model: PathBuf,
    /// A pairs file (safetensors; see `train::data`).
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
    pub lr_schedule: String,
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
    /// Recompute memory-bound activations in the backward pass (Burn's "balanced"
    /// gradient checkpointing) to lower peak memory.
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
    /// Compute precision: f32, or bf16/f16 with f32 master weights and optimizer state.
    #[serde(default = "f32_name")]
    pub dtype: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSection {
    #[serde(default = "adamw")]
    pub name: String,
    #[serde(default = "lr")]
    pub lr: f64,
    #[serde(default = "beta1")]
    pub beta1: f64,
    #[serde(default = "beta2")]
    pub beta2: f64,
    #[serde(default = "eps")]
    pub eps: f64,
    #[serde(default = "wd")]
    pub weight_decay: f64,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        Self { name: adamw(), lr: lr(), beta1: beta1(), beta2: beta2(), eps: eps(), weight_decay: wd() }
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
fn twenty() -> usize {
    20
}
fn five_f() -> f64 {
    5.0
}
fn one_f() -> f64 {
    1.0
}
fn adamw() -> String {
    "adamw".into()
}
fn constant_with_warmup() -> String {
    "constant_with_warmup".into()
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
fn wd() -> f64 {
    1e-2
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
        for o in overrides {
            set(&mut value, o)?;
        }
        let config: TrainConfig = value.try_into().with_context(|| format!("{}: invalid config", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.steps > 0, "steps must be > 0");
        ensure!(self.batch_size > 0 && self.grad_accumulation > 0, "batch_size and grad_accumulation must be > 0");
        ensure!(
            ["constant", "constant_with_warmup", "linear", "cosine"].contains(&self.lr_schedule.as_str()),
            "lr_schedule {:?}: expected constant, constant_with_warmup, linear or cosine",
            self.lr_schedule
        );
        ensure!(self.keep_checkpoints > 0, "keep_checkpoints must be > 0");
        self.dtype.parse::<crate::device::Precision>()?;
        if let Some(l) = &self.lora {
            ensure!(l.rank > 0, "lora.rank must be > 0");
            ensure!(!l.targets.is_empty(), "lora.targets is empty");
        }
        Ok(())
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
