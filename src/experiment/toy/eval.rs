//! Scoring a toy model: samples for fixed prompts and seeds, read back (as floats) by the
//! transparent scorers (`toy::score`), and the denoising errors of fixed chosen/rejected
//! pairs.

use std::path::Path;

use anyhow::Result;
use burn::tensor::{Device, Tensor};

use super::pretrain::eval_subjects;
use crate::data::stream::PairSource;
use crate::eval::metrics::Metrics;
use crate::experiment::config::EvalConfig;
use crate::models::unet::UNet2DConditionModel;
use crate::objective::Objective;
use crate::sample::sampler::Sampler;
use crate::sample::validate::{Prompts, initial_noise, sample_latents};
use crate::toy::data::Subject;
use crate::toy::model::{Conditioner, SIZE};
use crate::toy::score::ToyScorer;
use crate::train::data::first_batch;
use crate::train::step::{PairBatch, pair_errors};

pub struct ToyEvaluator {
    subjects: Vec<Subject>,
    prompts: Prompts,
    noise: Tensor<4>,
    sampler: Box<dyn Sampler>,
    guidance: f64,
    pairs: PairBatch,
    objective: Objective,
    /// The experiment's `[online.rewards]`, scored on the samples as `reward`.
    rewards: Option<std::collections::BTreeMap<String, f64>>,
}

impl ToyEvaluator {
    /// `reference`: the folder with the toy text encoder; `pairs`: the run's pairs file.
    pub fn new(
        reference: &Path,
        pairs: &Path,
        config: &EvalConfig,
        objective: &Objective,
        rewards: Option<&std::collections::BTreeMap<String, f64>>,
        device: &Device,
    ) -> Result<Self> {
        let subjects = eval_subjects(config.seeds);
        let cond = Conditioner::load(reference, device)?
            .encode(&subjects.iter().map(|s| Some(s.caption())).collect::<Vec<_>>(), device)?;
        let prompts = Prompts {
            context: cond.context,
            text_embeds: cond.text_embeds,
            time_ids: Some(cond.time_ids),
            negative: None,
            embedded_guidance: None,
        };
        let data = PairSource::open(pairs, config.seed, 1, false)?;
        let n = config.error_pairs.min(data.len).max(1);
        Ok(Self {
            noise: initial_noise(config.seed, subjects.len(), [3, SIZE, SIZE], device),
            sampler: objective.sampler(config.steps)?,
            guidance: config.guidance,
            pairs: first_batch(&data, n, objective, device)?,
            objective: objective.clone(),
            rewards: rewards.cloned(),
            subjects,
            prompts,
        })
    }

    /// Scores `unet` (a model on a plain device: `unet.valid()` during training); returns
    /// the metrics (`style_b`, `fidelity`, `chosen_error`, `rejected_error`) and the
    /// samples ([K,3,SIZE,SIZE], one per prompt and seed).
    pub fn evaluate(&self, unet: &UNet2DConditionModel, step: usize) -> Result<(Metrics, Tensor<4>)> {
        let samples =
            sample_latents(unet, self.sampler.as_ref(), &self.prompts, self.noise.clone(), self.guidance, &mut |_| {});
        let pixels: Vec<f32> =
            samples.clone().into_data().convert::<f32>().try_to_vec().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let images: Vec<Vec<f32>> = pixels.chunks(3 * SIZE * SIZE).map(<[f32]>::to_vec).collect();
        let captions: Vec<String> = self.subjects.iter().map(|s| s.caption()).collect();
        let mut metrics = Metrics::new(step);
        for scorer in [ToyScorer::StyleB, ToyScorer::Fidelity] {
            let scores = scorer.score_pixels(&images, SIZE, &captions)?;
            metrics.values.insert(scorer.name().into(), scores.iter().sum::<f64>() / scores.len().max(1) as f64);
        }
        if let Some(weights) = &self.rewards {
            let names: Vec<String> = weights.keys().cloned().collect();
            let views: Vec<&[f32]> = images.iter().map(Vec::as_slice).collect();
            let scores = crate::online::task::toy_rewards(&names, &views, &captions)?;
            let n = images.len().max(1) as f64;
            let reward = names.iter().zip(&scores).map(|(k, s)| weights[k] * s.iter().sum::<f64>() / n).sum();
            metrics.values.insert("reward".into(), reward);
        }
        let e = pair_errors(unet, &self.pairs, &self.objective);
        let mean = |t: Tensor<1>| t.mean().into_scalar::<f32>() as f64;
        let metrics =
            metrics.with("chosen_error", mean(e.chosen.clone())).with("rejected_error", mean(e.rejected().clone()));
        Ok((metrics, samples))
    }
}
