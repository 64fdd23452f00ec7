//! What scores a run during and after training: the built-in model's evaluator, or a
//! prompt suite with reward models for a diffusers model (`[eval] prompts` + `[eval.scorers]`).
//! Both give named metrics, so the report puts them in the same table.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::{DType, Device, Tensor};

use super::config::EvalConfig;
use super::toy::eval::ToyEvaluator;
use crate::eval::images::{Renderer, Settings};
use crate::eval::metrics::Metrics;
use crate::eval::resize::Rgb8;
use crate::eval::scorer::{Scorer, ScorerFiles, load_scorer};
use crate::eval::suite::load_suite;
use crate::models::io::write_tensors;
use crate::models::unet::UNet2DConditionModel;
use crate::objective::Objective;

pub enum Evaluator {
    Toy(Box<ToyEvaluator>),
    Suite(Box<SuiteEvaluator>),
}

/// What an evaluation leaves besides its metrics.
pub enum Samples {
    /// The toy model's samples, [K,3,16,16] in [-1, 1] (`samples.png` reads them).
    Toy(Box<Tensor<4>>),
    /// One image per (prompt, seed), in suite order.
    Images(Vec<(String, image::RgbImage)>),
}

impl Evaluator {
    /// `None` when the experiment asks for no scoring (a diffusers model without a suite).
    pub fn new(
        toy: bool,
        model: &Path,
        pairs: &Path,
        c: &EvalConfig,
        objective: &Objective,
        rewards: Option<&std::collections::BTreeMap<String, f64>>,
        device: &Device,
    ) -> Result<Option<Self>> {
        Ok(if toy {
            Some(Self::Toy(Box::new(ToyEvaluator::new(model, pairs, c, objective, rewards, device)?)))
        } else if c.has_suite() {
            Some(Self::Suite(Box::new(SuiteEvaluator::new(model, c, device)?)))
        } else {
            None
        })
    }

    /// The metrics at `step`, and the samples when `keep` (the toy's are always small).
    pub fn evaluate(&self, unet: &UNet2DConditionModel, step: usize, keep: bool) -> Result<(Metrics, Samples)> {
        match self {
            Self::Toy(t) => t.evaluate(unet, step).map(|(m, s)| (m, Samples::Toy(Box::new(s)))),
            Self::Suite(s) => s.evaluate(unet, step, keep),
        }
    }
}

impl Samples {
    /// Into a run folder: `samples.safetensors` (toy) or `samples/NNNNN-sS.png`.
    pub fn save(self, dir: &Path) -> Result<()> {
        match self {
            Self::Toy(t) => write_tensors(&dir.join("samples.safetensors"), vec![("samples".into(), t.into_data())]),
            Self::Images(images) => {
                let out = dir.join("samples");
                std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
                for (name, img) in images {
                    let path = out.join(name);
                    crate::util::save_image(&path, &img)?;
                }
                Ok(())
            }
        }
    }
}

pub struct SuiteEvaluator {
    renderer: Renderer,
    prompts: Vec<String>,
    scorers: Vec<Box<dyn Scorer>>,
    seeds: usize,
    settings: Settings,
}

impl SuiteEvaluator {
    pub fn new(model: &Path, c: &EvalConfig, device: &Device) -> Result<Self> {
        let path = c.prompts.as_deref().context("[eval] prompts")?;
        let prompts = load_suite(path, c.prompt_column.as_deref(), c.max_prompts).context("[eval] prompts")?;
        let files = ScorerFiles {
            clip: c.clip_model.as_deref(),
            config: c.hps_config.as_deref(),
            tokenizer: c.tokenizer.as_deref(),
        };
        let scorers = c
            .scorers
            .iter()
            .map(|(name, p)| load_scorer(name, p, files, device).with_context(|| format!("[eval.scorers] {name}")))
            .collect::<Result<_>>()?;
        let renderer = Renderer::load(model, device, DType::F32)?;
        let unet_dir = crate::models::folder::component_dir(model, "unet")?;
        let (unet_config, _) = crate::models::config::read_config::<crate::models::unet::UNetConfig>(&unet_dir)?;
        let size = c.size.unwrap_or(renderer.default_size(unet_config.sample_size));
        Ok(Self {
            renderer,
            prompts,
            scorers,
            seeds: c.seeds,
            settings: Settings { steps: c.steps, guidance: c.guidance, size },
        })
    }

    /// Every (prompt, seed) image of `unet`, then each scorer's mean over them; the images
    /// are kept only when `keep` (one prompt's images are in memory otherwise).
    pub fn evaluate(&self, unet: &UNet2DConditionModel, step: usize, keep: bool) -> Result<(Metrics, Samples)> {
        self.renderer.check(unet, self.settings.size).context("[eval] size")?;
        let mut kept = Vec::new();
        let mut sums = vec![0.0; self.scorers.len()];
        for (p, prompt) in self.prompts.iter().enumerate() {
            let images: Vec<image::RgbImage> = (0..self.seeds)
                .map(|s| self.renderer.suite_image(unet, (p, prompt), s, &self.settings))
                .collect::<Result<_>>()?;
            let rgb: Vec<Rgb8> = images.iter().cloned().map(Rgb8::from).collect();
            let captions = vec![prompt.clone(); self.seeds];
            for (sum, scorer) in sums.iter_mut().zip(&self.scorers) {
                *sum += scorer.score(&rgb, &captions)?.iter().sum::<f64>();
            }
            if keep {
                kept.extend(images.into_iter().enumerate().map(|(s, img)| (format!("{p:05}-s{s}.png"), img)));
            }
        }
        let n = (self.prompts.len() * self.seeds) as f64;
        let mut metrics = Metrics::new(step);
        for (sum, scorer) in sums.iter().zip(&self.scorers) {
            metrics.values.insert(scorer.name().into(), sum / n);
        }
        Ok((metrics, Samples::Images(kept)))
    }
}
