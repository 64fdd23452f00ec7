//! Scoring a toy model: samples for fixed prompts and seeds, read back by the transparent
//! scorer (`eval::toy_score`), and the denoising errors of fixed chosen/rejected pairs.

use std::path::Path;

use anyhow::Result;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::experiment::{Conditioner, SIZE, eval_subjects};
use crate::data::stream::PairSource;
use crate::models::unet::UNet2DConditionModel;
use crate::sample::euler::EulerSchedule;
use crate::sample::schedule::NoiseSchedule;
use crate::sample::validate::{Prompts, initial_noise, sample_latents};
use crate::toy::data::{Style, Subject};
use crate::toy::score::{read, summarize};
use crate::train::data::first_batch;
use crate::train::step::{PairBatch, pair_errors};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Score the model every N optimizer steps (and after the last).
    pub every: usize,
    /// Samples per prompt (every subject of the grammar is a prompt).
    pub seeds: usize,
    pub steps: usize,
    pub guidance: f64,
    /// Seed of the sampling noise and of the error pairs' noise: the same for every run.
    pub seed: u64,
    /// Pairs whose chosen/rejected errors are reported.
    pub error_pairs: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { every: 50, seeds: 2, steps: 20, guidance: 3.0, seed: 1234, error_pairs: 48 }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToyMetrics {
    pub step: usize,
    /// Share of samples the scorer reads as style B (striped).
    pub style_b: f64,
    /// Share of samples whose shape, colour and background match the prompt.
    pub fidelity: f64,
    /// Mean denoising error of the fixed chosen / rejected images.
    pub chosen_error: f64,
    pub rejected_error: f64,
}

pub struct ToyEvaluator {
    subjects: Vec<Subject>,
    prompts: Prompts,
    noise: Tensor<4>,
    sampler: EulerSchedule,
    guidance: f64,
    pairs: PairBatch,
    schedule: NoiseSchedule,
}

impl ToyEvaluator {
    /// `reference`: the folder with the toy text encoder; `pairs`: the run's pairs file.
    pub fn new(reference: &Path, pairs: &Path, config: &EvalConfig, device: &Device) -> Result<Self> {
        let subjects = eval_subjects(config.seeds);
        let cond = Conditioner::load(reference, device)?
            .encode(&subjects.iter().map(|s| Some(s.caption())).collect::<Vec<_>>(), device)?;
        let prompts =
            Prompts { context: cond.context, text_embeds: cond.text_embeds, time_ids: cond.time_ids, negative: None };
        let schedule = NoiseSchedule::sdxl();
        let data = PairSource::open(pairs, config.seed, 1, false)?;
        let n = config.error_pairs.min(data.len).max(1);
        Ok(Self {
            noise: initial_noise(config.seed, subjects.len(), [3, SIZE, SIZE], device),
            sampler: EulerSchedule::new(&schedule, config.steps, "leading", 1)?,
            guidance: config.guidance,
            pairs: first_batch(&data, n, schedule.num_train_timesteps(), device)?,
            schedule,
            subjects,
            prompts,
        })
    }

    /// Scores `unet` (a model on a plain device: `unet.valid()` during training); returns
    /// the metrics and the samples ([K,3,SIZE,SIZE], one per prompt and seed).
    pub fn evaluate(&self, unet: &UNet2DConditionModel, step: usize) -> Result<(ToyMetrics, Tensor<4>)> {
        let samples =
            sample_latents(unet, &self.sampler, &self.prompts, self.noise.clone(), self.guidance, &mut |_| {});
        let pixels: Vec<f32> =
            samples.clone().into_data().convert::<f32>().try_to_vec().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let per = 3 * SIZE * SIZE;
        let readings: Vec<_> =
            self.subjects.iter().enumerate().map(|(i, s)| (read(&pixels[i * per..(i + 1) * per], SIZE), *s)).collect();
        let (style_b, fidelity) = summarize(&readings, Style::Striped);
        let e = pair_errors(unet, &self.pairs, &self.schedule);
        let mean = |t: Tensor<1>| t.mean().into_scalar::<f32>() as f64;
        let metrics = ToyMetrics {
            step,
            style_b,
            fidelity,
            chosen_error: mean(e.chosen.clone()),
            rejected_error: mean(e.rejected().clone()),
        };
        Ok((metrics, samples))
    }
}
