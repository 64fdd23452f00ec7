//! `[online]`: a run that samples its own training data (docs/design.md §4c). Prompts are
//! sampled in groups of `group_size`, scored by the `rewards`, and trained on with an online
//! method (`grpo`, `nft`) or, for a pair method (`mapo`, `dpo`, ...), on the best and worst
//! image of each group ("online pairs").

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineConfig {
    /// Rounds of sample → score → train. Online runs count these, not `steps`.
    pub iterations: usize,
    /// The prompt suite (text, JSON lines or parquet, as `mapo eval` reads); absent for the
    /// built-in model, whose prompts are its grammar's captions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompts: Option<usize>,
    /// Samples per prompt (a group; the advantages are relative to it). At least 2.
    #[serde(default = "group_size")]
    pub group_size: usize,
    /// Prompts (groups) sampled per iteration: an iteration has group_size × this samples.
    #[serde(default = "prompts_per_iteration")]
    pub prompts_per_iteration: usize,
    /// Passes over an iteration's samples (each batch of `batch_size` samples or pairs is
    /// one optimizer step).
    #[serde(default = "one")]
    pub inner_epochs: usize,
    /// Sampling steps of the rollouts (flow_grpo: 10).
    #[serde(default = "ten")]
    pub sampling_steps: usize,
    /// Classifier-free guidance of the rollouts and of GRPO's training passes (4.5); NFT is
    /// guidance-free in both (its rollouts ignore this).
    #[serde(default = "guidance")]
    pub guidance: f64,
    /// The SDE's noise level a (0.7); 0 is the ODE, which has no log-probabilities.
    #[serde(default = "noise_level")]
    pub noise_level: f64,
    /// DDIM's η of an ε-model's rollouts (DDPO: 1.0); 0 is deterministic DDIM.
    #[serde(default = "eta")]
    pub eta: f64,
    /// The share of the sampling steps trained on per sample (the first ⌊f·N⌋ for GRPO, a
    /// random ⌊f·N⌋ for NFT; ⌊f·N⌋ noise draws per pair for online pairs).
    #[serde(default = "train_fraction")]
    pub train_fraction: f64,
    /// Online pairs: the reference (which samples the pairs) becomes the policy every this
    /// many iterations; 0 never (iterative offline pairs from the reference).
    #[serde(default)]
    pub ref_update_steps: usize,
    /// Reward → weight; the reward is their weighted sum. The built-in model's rewards are
    /// `style_b`, `stripes` and `fidelity`; a diffusers model's `pickscore`, `clip`,
    /// `aesthetic` and `hps` (with their files in `reward_models`).
    pub rewards: BTreeMap<String, f64>,
    /// Reward → its model file or folder (diffusers models).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reward_models: BTreeMap<String, PathBuf>,
    /// aesthetic: the ViT-L/14 CLIPModel folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_model: Option<PathBuf>,
    /// hps: a CLIP tokenizer folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// In `mapo experiment`: score the policy every this many iterations (0: after the last
    /// only; the last is always scored).
    #[serde(default)]
    pub eval_every: usize,
    /// Image side in pixels of a diffusers model's rollouts (default: its sample size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
}

fn group_size() -> usize {
    8
}
fn prompts_per_iteration() -> usize {
    4
}
fn one() -> usize {
    1
}
fn ten() -> usize {
    10
}
fn guidance() -> f64 {
    4.5
}
fn noise_level() -> f64 {
    crate::sample::sde::NOISE_LEVEL
}
fn eta() -> f64 {
    1.0
}
fn train_fraction() -> f64 {
    0.99
}

impl OnlineConfig {
    pub fn validate(&self, method: &str) -> Result<()> {
        ensure!(
            (1..=1_000_000).contains(&self.iterations),
            "[online] iterations {} must be in 1..=1000000",
            self.iterations
        );
        ensure!(
            (2..=4096).contains(&self.group_size),
            "[online] group_size {}: a group needs at least 2 samples (advantages and pairs compare within it), at \
             most 4096",
            self.group_size
        );
        ensure!(
            (1..=4096).contains(&self.prompts_per_iteration),
            "[online] prompts_per_iteration {} must be in 1..=4096",
            self.prompts_per_iteration
        );
        ensure!(
            (1..=100).contains(&self.inner_epochs),
            "[online] inner_epochs {} must be in 1..=100",
            self.inner_epochs
        );
        ensure!(
            (1..=1000).contains(&self.sampling_steps),
            "[online] sampling_steps {} must be in 1..=1000",
            self.sampling_steps
        );
        ensure!(self.guidance.is_finite() && self.guidance >= 0.0, "[online] guidance {} must be ≥ 0", self.guidance);
        ensure!(
            self.noise_level.is_finite() && (0.0..=10.0).contains(&self.noise_level),
            "[online] noise_level {} must be in [0, 10]",
            self.noise_level
        );
        ensure!(
            self.train_fraction > 0.0 && self.train_fraction <= 1.0,
            "[online] train_fraction {} must be in (0, 1]",
            self.train_fraction
        );
        ensure!(self.train_steps() >= 1, "[online] train_fraction × sampling_steps trains no step; raise either");
        ensure!(!self.rewards.is_empty(), "[online] rewards is empty: give at least one, e.g. pickscore = 1.0");
        for (name, w) in &self.rewards {
            ensure!(w.is_finite(), "[online.rewards] {name} = {w} is not a finite weight");
        }
        ensure!(self.eta.is_finite() && (0.0..=1.0).contains(&self.eta), "[online] eta {} must be in [0, 1]", self.eta);
        if method == "ddpo" {
            ensure!(
                self.eta > 0.0,
                "[online] eta = 0 samples with deterministic DDIM, which has no log-probabilities; ddpo needs them \
                 (ddpo-pytorch: eta = 1.0)"
            );
        }
        if method == "grpo" {
            ensure!(
                self.noise_level > 0.0,
                "[online] noise_level = 0 samples with the ODE, which has no log-probabilities; grpo needs them \
                 (flow_grpo: noise_level = 0.7)"
            );
        }
        Ok(())
    }

    /// Sampling steps trained on per sample: ⌊train_fraction · sampling_steps⌋.
    pub fn train_steps(&self) -> usize {
        (self.train_fraction * self.sampling_steps as f64 + 1e-9).floor() as usize
    }

    /// Samples per iteration.
    pub fn samples(&self) -> usize {
        self.group_size * self.prompts_per_iteration
    }
}
