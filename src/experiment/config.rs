//! Experiment files: which model, which data, which methods, what to sweep. Unknown keys
//! are an error. `[sweep]` lists expand to their cartesian product and `seeds` to one run
//! per seed; a `method_params.<method>.<key>` sweep only multiplies that method's runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use super::toy::pretrain::PretrainConfig;
use crate::train::config::{TrainConfig, set};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Runs go to `<runs_dir>/<name>/<run>/`.
    pub name: String,
    #[serde(default = "runs")]
    pub runs_dir: PathBuf,
    /// Methods from the loss registry (sft, dpo, mapo, ...).
    pub methods: Vec<String>,
    /// One run per seed (fine-tuning order, noise, timesteps); the report gives mean ± std.
    #[serde(default = "seed_zero")]
    pub seeds: Vec<u64>,
    pub model: ModelSection,
    pub data: DataSection,
    /// Pretraining of the built-in model's reference (ignored for a diffusers folder).
    #[serde(default)]
    pub pretrain: PretrainConfig,
    /// Any `mapo train` setting except model, data, output_dir, method, seed, method_params.
    #[serde(default)]
    pub train: toml::Table,
    /// Per-method parameters: `[method_params.dpo] beta = 2000`.
    #[serde(default)]
    pub method_params: BTreeMap<String, BTreeMap<String, f64>>,
    /// Scoring of the built-in model during and after training.
    #[serde(default)]
    pub eval: EvalConfig,
    /// Dotted key → values, e.g. `"method_params.mapo.beta" = [0.05, 0.1]`.
    #[serde(default)]
    pub sweep: BTreeMap<String, Vec<toml::Value>>,
    /// The online runs' `[online]` (methods `grpo`, `nft`, and `online-<pair method>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<crate::train::online_config::OnlineConfig>,
}

/// An experiment's method name: `grpo` and `nft` train online, `online-mapo` (any pair
/// method after `online-`) is that method on online pairs; the rest train on the data.
pub fn split_method(listed: &str) -> (&str, bool) {
    match listed.strip_prefix("online-") {
        Some(base) => (base, true),
        None => (listed, crate::losses::online::OnlineMethod::is_online(listed)),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// `"toy"`: the built-in tiny model, pretrained by mapo and cached.
    pub builtin: Option<String>,
    /// A diffusers pipeline folder, or a single `.safetensors` checkpoint.
    pub path: Option<PathBuf>,
    /// With a single-file `path` that is not SDXL base (an SD3.5 or FLUX.1 file, another
    /// SDXL architecture): a diffusers folder of its model (configs, tokenizers, and what the
    /// file lacks), as `--config` on the command line.
    #[serde(default)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Built-in pairs: `"style"` (reference mismatch) or `"colour"` (no mismatch).
    pub generated: Option<String>,
    /// Generated pairs per subject of the grammar.
    #[serde(default = "four")]
    pub pairs_per_subject: usize,
    /// Seed of the generated pairs' placements.
    #[serde(default = "seed_one")]
    pub seed: u64,
    /// A trainer pairs file (safetensors of latents and embeddings), or a `mapo cache`
    /// folder (also accepted as `cache = "DIR"`).
    #[serde(alias = "cache")]
    pub pairs: Option<PathBuf>,
    /// Pick-a-Pic-format parquet (a file, folder or pattern): encoded once into
    /// `<runs_dir>/<name>/_data/cache-<resolution>/`, which every run then reads.
    pub parquet: Option<PathBuf>,
    /// Transforms of the parquet images (`resolution`, `random_crop`, `flip`, `caption_dropout`).
    #[serde(default)]
    pub transform: crate::data::transform::TransformConfig,
    /// How the parquet rows are read (`unpaired`, `[data.read.columns]`, `keep_ties`,
    /// `max_samples`): the same `[data.read]` a run file takes. Absent from the saved
    /// identity when default, so folders made before it existed still match.
    #[serde(default, skip_serializing_if = "is_default_read")]
    pub read: crate::data::parquet::ReadOptions,
}

/// `[eval]`: scoring during and after training (every `every` steps and at the last), and
/// of the model before fine-tuning (the `reference` row). The built-in model is read by its
/// transparent scorers on its grammar's prompts; a diffusers model is scored on `prompts`
/// with the reward models in `scorers`, each image from the noise of its (prompt, seed)
/// as in `mapo eval`, so the reference row and `mapo eval`'s `base` agree.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Score the model every N optimizer steps (and after the last).
    pub every: usize,
    /// Samples per prompt.
    pub seeds: usize,
    pub steps: usize,
    pub guidance: f64,
    /// The toy model: seed of the sampling noise and of the error pairs' noise (the same
    /// for every run).
    pub seed: u64,
    /// The toy model: pairs whose chosen/rejected errors are reported.
    pub error_pairs: usize,
    /// A diffusers model: the prompt suite (text, JSON lines or parquet, as `mapo eval`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompts: Option<PathBuf>,
    /// The JSON field or parquet column of the prompts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_column: Option<String>,
    /// Only the suite's first N prompts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_prompts: Option<usize>,
    /// Scorer → its model: `pickscore = "DIR"`, `clip = "DIR"`, `aesthetic = "FILE.pth"`
    /// (with `clip_model`), `hps = "FILE.pt"` (with `tokenizer`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub scorers: BTreeMap<String, PathBuf>,
    /// aesthetic: the ViT-L/14 CLIPModel folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_model: Option<PathBuf>,
    /// hps: a CLIP tokenizer folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// hps: the open_clip model config (default ViT-H-14).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hps_config: Option<PathBuf>,
    /// Image side in pixels (default: the UNet's sample size × the VAE's factor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            every: 50,
            seeds: 2,
            steps: 20,
            guidance: 3.0,
            seed: 1234,
            error_pairs: 48,
            prompts: None,
            prompt_column: None,
            max_prompts: None,
            scorers: BTreeMap::new(),
            clip_model: None,
            tokenizer: None,
            hps_config: None,
            size: None,
        }
    }
}

impl EvalConfig {
    /// A diffusers model's suite evaluation is asked for.
    pub fn has_suite(&self) -> bool {
        self.prompts.is_some()
    }

    fn check(&self, toy: bool) -> Result<()> {
        ensure!(self.seeds > 0 && self.steps > 0, "[eval] seeds and steps must be > 0");
        if toy {
            ensure!(
                !self.has_suite() && self.scorers.is_empty(),
                "[eval] prompts/scorers are for a diffusers model: the built-in model is scored on its own \
                 grammar's prompts by its transparent scorers"
            );
            return Ok(());
        }
        ensure!(
            self.has_suite() != self.scorers.is_empty(),
            "[eval]: give both prompts = \"FILE\" and [eval.scorers] (e.g. pickscore = \"DIR\"), or neither"
        );
        for name in self.scorers.keys() {
            ensure!(
                ["pickscore", "clip", "aesthetic", "hps"].contains(&name.as_str()),
                "[eval.scorers] {name:?}: expected pickscore, clip, aesthetic or hps"
            );
        }
        Ok(())
    }
}

fn runs() -> PathBuf {
    "runs".into()
}
fn seed_zero() -> Vec<u64> {
    vec![0]
}
fn seed_one() -> u64 {
    1
}
fn four() -> usize {
    4
}

/// One run of an experiment: its settings with the sweep applied.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    pub name: String,
    pub method: String,
    pub seed: u64,
    /// Swept keys and their values in this run (short key = last dotted component).
    pub varied: BTreeMap<String, String>,
    pub config: ExperimentConfig,
}

impl ExperimentConfig {
    pub fn is_toy(&self) -> bool {
        self.model.builtin.is_some()
    }

    /// The objective the runs train with (a planned run's: see `align_pretrain`).
    pub fn objective(&self) -> Result<crate::objective::Objective> {
        crate::objective::Objective::new(self.pretrain.objective, self.pretrain.flow.as_ref())
    }

    /// This run's `mapo train` config.
    pub fn train_config(&self, method: &str, seed: u64, model: &Path, data: &Path, out: &Path) -> Result<TrainConfig> {
        let mut table = self.train.clone();
        crate::train::config_names::canonicalize(&mut table, "[train]")?;
        let (known, _) = crate::train::config::known_keys()?;
        let sections = crate::train::config::sections()?;
        crate::train::config_names::check_known(&table, &known, &sections, &|_| "[train]".to_string())?;
        for key in ["model", "model_config", "data", "output_dir", "method", "seed", "method_params"] {
            if table.contains_key(key) {
                bail!("[train] must not set {key:?}: the experiment sets it for each run");
            }
        }
        table.insert("model".into(), toml::Value::String(model.display().to_string()));
        if let Some(config) = &self.model.config {
            table.insert("model_config".into(), toml::Value::String(config.display().to_string()));
        }
        table.insert("data".into(), toml::Value::String(data.display().to_string()));
        table.insert("output_dir".into(), toml::Value::String(out.display().to_string()));
        let (base, online) = split_method(method);
        table.insert("method".into(), toml::Value::String(base.into()));
        table.insert("seed".into(), toml::Value::Integer(seed as i64));
        if online {
            let section = self.online.as_ref().with_context(|| {
                format!(
                    "method {method:?} trains online: add an [online] section (iterations, group_size, rewards, ...)"
                )
            })?;
            table.insert("online".into(), toml::Value::try_from(section)?);
        }
        // `online-mapo` takes `[method_params.online-mapo]`, else MaPO's.
        let params = self.method_params.get(method).or(self.method_params.get(base)).cloned().unwrap_or_default();
        let params: toml::Table = params.into_iter().map(|(k, v)| (k, toml::Value::Float(v))).collect();
        table.insert("method_params".into(), toml::Value::Table(params));
        let config: TrainConfig = toml::Value::Table(table).try_into().context("[train]: invalid setting")?;
        config.validate()?;
        Ok(config)
    }
}

fn is_default_read(r: &crate::data::parquet::ReadOptions) -> bool {
    *r == crate::data::parquet::ReadOptions::default()
}

/// The built-in model's reference is pretrained with the runs' objective (`[train]
/// objective` and `[train.flow]`): a flow toy fine-tunes a flow reference.
fn align_pretrain(p: &mut PretrainConfig, train: &TrainConfig) -> Result<()> {
    ensure!(
        p.objective == train.objective || p.objective.is_epsilon(),
        "[pretrain] objective = {:?} but [train] objective = {:?}: set [train] objective, the reference follows it",
        p.objective.as_str(),
        train.objective.as_str()
    );
    p.objective = train.objective;
    p.flow = train.flow.clone();
    Ok(())
}

/// Reads an experiment file, applies `--set` overrides, and expands it into runs.
pub fn load(path: &Path, overrides: &[String]) -> Result<(ExperimentConfig, Vec<PlannedRun>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut raw: toml::Value =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    for o in overrides {
        set(&mut raw, o)?;
    }
    let base: ExperimentConfig =
        raw.clone().try_into().with_context(|| format!("{}: invalid experiment", path.display()))?;
    let runs = plan(&base, &raw).with_context(|| format!("{}: invalid experiment", path.display()))?;
    Ok((base, runs))
}

/// The most runs one experiment file may plan: beyond it a sweep is almost surely a mistake
/// (10⁴ runs of even the toy model take days), and its plan alone would cost minutes.
pub const MAX_RUNS: usize = 10_000;

/// An experiment's `name` is one folder inside `runs_dir`: a plain name, never a path.
fn check_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !name.starts_with('.');
    ensure!(
        plain,
        "name {name:?}: an experiment's name is a folder inside runs_dir: letters, digits, '.', '_' and '-', not \
         starting with '.' (a path would write its runs and report elsewhere)"
    );
    Ok(())
}

fn plan(base: &ExperimentConfig, raw: &toml::Value) -> Result<Vec<PlannedRun>> {
    check_name(&base.name)?;
    ensure!(!base.methods.is_empty(), "methods is empty");
    ensure!(!base.seeds.is_empty(), "seeds is empty");
    ensure!(
        base.model.config.is_none() || base.model.path.is_some(),
        "[model] config goes with a single-file [model] path (a diffusers folder of its model)"
    );
    ensure!(
        base.model.builtin.is_some() != base.model.path.is_some(),
        "[model]: give exactly one of builtin = \"toy\" or path = \"DIR\""
    );
    if let Some(b) = &base.model.builtin {
        ensure!(b == "toy", "[model] builtin {b:?}: the only built-in model is \"toy\"");
    }
    let sources = [base.data.generated.is_some(), base.data.pairs.is_some(), base.data.parquet.is_some()];
    ensure!(
        sources.iter().filter(|s| **s).count() == 1,
        "[data]: give exactly one of generated = \"style\"|\"colour\", pairs = \"FILE\", cache = \"DIR\" or parquet = \"FILES\""
    );
    ensure!(
        base.data.parquet.is_none() || !base.is_toy(),
        "[data] parquet needs a diffusers model (model.path): the built-in model has no VAE"
    );
    ensure!(
        base.data.generated.is_none() || base.is_toy(),
        "[data] generated pairs need the built-in model (model.builtin = \"toy\")"
    );
    for m in &base.methods {
        let (name, _) = split_method(m);
        let params = base.method_params.get(m).or(base.method_params.get(name)).cloned().unwrap_or_default();
        let params = crate::losses::Params::from_map(params);
        match crate::losses::online::OnlineMethod::is_online(name) {
            true => crate::losses::online::OnlineMethod::build(name, params).map(|_| ()),
            false => crate::losses::build(name, params).map(|_| ()),
        }
        .with_context(|| format!("method {m:?}"))?;
    }
    base.eval.check(base.is_toy())?;
    for (key, values) in &base.sweep {
        ensure!(!values.is_empty(), "[sweep] {key:?} has no values");
        ensure!(!key.starts_with("sweep") && key != "name" && key != "seeds", "[sweep] cannot vary {key:?}");
    }

    let planned = base
        .sweep
        .values()
        .map(Vec::len)
        .chain([base.methods.len(), base.seeds.len()])
        .try_fold(1usize, |n, k| n.checked_mul(k))
        .filter(|&n| n <= MAX_RUNS);
    ensure!(
        planned.is_some(),
        "methods × seeds × the [sweep] values make more than {MAX_RUNS} runs; split the experiment into several files"
    );
    let keys: Vec<&String> = base.sweep.keys().collect();
    let mut combos: Vec<Vec<(String, toml::Value)>> = vec![vec![]];
    for key in &keys {
        combos = combos
            .into_iter()
            .flat_map(|c| {
                base.sweep[*key].iter().map(move |v| {
                    let mut c = c.clone();
                    c.push(((*key).clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    let mut out: Vec<PlannedRun> = Vec::new();
    // What each run is (method, seed, the values that matter to it): a sweep of another
    // method's parameter repeats it, and is planned once. Two different runs whose names
    // come out the same after sanitising are an error, never one run silently dropped.
    let mut seen: HashSet<String> = HashSet::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for combo in &combos {
        for method in &base.methods {
            // A sweep of another method's parameter does not make new runs of this one.
            let relevant: Vec<&(String, toml::Value)> = combo
                .iter()
                .filter(|(k, _)| !k.starts_with("method_params.") || k.starts_with(&format!("method_params.{method}.")))
                .collect();
            let short = short_names(&relevant.iter().map(|(k, _)| k).collect::<Vec<_>>());
            for &seed in &base.seeds {
                let identity = format!("{method} {seed} {relevant:?}");
                if !seen.insert(identity.clone()) {
                    continue;
                }
                let mut value = raw.clone();
                if let Some(t) = value.as_table_mut() {
                    t.remove("sweep");
                }
                let mut varied = BTreeMap::new();
                for (k, v) in &relevant {
                    set(&mut value, &format!("{k}={v}"))?;
                    varied.insert(short[k.as_str()].clone(), display(v));
                }
                let mut config: ExperimentConfig = value.try_into().context("after applying [sweep]")?;
                // Checked now, so that a typo fails before hours of earlier runs.
                let dot = Path::new(".");
                let train = config.train_config(method, seed, dot, dot, dot)?;
                align_pretrain(&mut config.pretrain, &train)?;
                let mut name = method.clone();
                for (k, v) in &varied {
                    name.push_str(&format!("-{k}={v}"));
                }
                name.push_str(&format!("-s{seed}"));
                let name: String = name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() || "._=-".contains(c) { c } else { '_' })
                    .collect();
                let values = || relevant.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ");
                if let Some(other) = names.insert(name.clone(), values()) {
                    bail!(
                        "two runs would share the folder name {name:?} ({other} and {}): sweep values must differ in \
                         letters, digits or '._=-' (others become '_')",
                        values()
                    );
                }
                out.push(PlannedRun { name, method: method.clone(), seed, varied, config });
            }
        }
    }
    Ok(out)
}

/// Each swept key of a run by its last dotted component, or by its whole path where two of
/// the run's keys share that last component (`train.optimizer.lr` and `pretrain.lr`): run
/// names stay unique.
fn short_names(keys: &[&String]) -> BTreeMap<String, String> {
    let last = |k: &str| k.rsplit('.').next().unwrap_or(k).to_string();
    keys.iter()
        .map(|k| {
            let shared = keys.iter().filter(|o| last(o) == last(k)).count() > 1;
            (k.to_string(), if shared { k.to_string() } else { last(k) })
        })
        .collect()
}

fn display(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
