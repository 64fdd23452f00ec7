//! What an online run samples for and is rewarded by: a prompt list, the conditioning of
//! its prompts, and rewards of the final latents. The built-in model's task is here
//! ([`ToyTask`]: its grammar's captions, its transparent pixel readings as rewards); a
//! diffusers model's is `suite::SuiteTask`.

use std::path::Path;

use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};

use crate::sample::validate::Prompts;
use crate::toy::data::{Style, Subject};
use crate::toy::model::{Conditioner, SIZE};
use crate::toy::score::read;

pub trait Task {
    /// The prompts to sample from.
    fn captions(&self) -> &[String];

    /// The conditioning of `captions` (one row each; with the negative prompt classifier-free
    /// guidance uses), on `device`.
    fn encode(&self, captions: &[String], device: &Device) -> Result<Prompts>;

    /// The shape [C, h, w] of one sample's latents.
    fn latent_shape(&self) -> [usize; 3];

    /// The rewards this task can give.
    fn reward_names(&self) -> Vec<&'static str>;

    /// Each named reward of the final latents [N, C, h, w] (row i of prompt `captions[i]`);
    /// NaN where a reward could not score an image.
    fn score(&self, names: &[String], latents: Tensor<4>, captions: &[String]) -> Result<Vec<Vec<f64>>>;
}

/// The built-in model: the 24 captions of its grammar, rewarded on its float samples by the
/// same readings its evaluation reports (`toy::score`):
/// - `style_b`: 1 for an image read as striped (style B), else 0;
/// - `stripes`: the stripe score itself, (Σ|Δy| − Σ|Δx|)/(Σ|Δy| + Σ|Δx|) in [−1, 1], a
///   graded version of `style_b` that rewards partial stripes;
/// - `fidelity`: 1 for an image whose shape, colour and background are the prompt's.
pub struct ToyTask {
    conditioner: Conditioner,
    captions: Vec<String>,
}

impl ToyTask {
    pub const REWARDS: [&str; 3] = ["style_b", "stripes", "fidelity"];

    /// `model`: the built-in model's folder (its `text_encoder`).
    pub fn load(model: &Path, device: &Device) -> Result<Self> {
        let conditioner = Conditioner::load(model, device).map_err(|e| {
            e.context(format!(
                "{}: [online] without prompts samples the built-in model's grammar, and this folder's text encoder \
                 is not the built-in model's; give [online] prompts = \"FILE\" for a diffusers model",
                model.display()
            ))
        })?;
        Ok(Self { conditioner, captions: Subject::all().iter().map(Subject::caption).collect() })
    }
}

impl Task for ToyTask {
    fn captions(&self) -> &[String] {
        &self.captions
    }

    fn encode(&self, captions: &[String], device: &Device) -> Result<Prompts> {
        let c = self.conditioner.encode(&captions.iter().cloned().map(Some).collect::<Vec<_>>(), device)?;
        Ok(Prompts {
            context: c.context,
            text_embeds: c.text_embeds,
            time_ids: Some(c.time_ids),
            negative: None,
            embedded_guidance: None,
        })
    }

    fn latent_shape(&self) -> [usize; 3] {
        [3, SIZE, SIZE]
    }

    fn reward_names(&self) -> Vec<&'static str> {
        Self::REWARDS.to_vec()
    }

    fn score(&self, names: &[String], latents: Tensor<4>, captions: &[String]) -> Result<Vec<Vec<f64>>> {
        let pixels: Vec<f32> =
            latents.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let images: Vec<&[f32]> = pixels.chunks(3 * SIZE * SIZE).collect();
        toy_rewards(names, &images, captions)
    }
}

/// The built-in model's rewards `names` of float images ([3, SIZE, SIZE] in [-1, 1] each)
/// of prompts `captions` (see [`ToyTask`]).
pub fn toy_rewards(names: &[String], images: &[&[f32]], captions: &[String]) -> Result<Vec<Vec<f64>>> {
    let readings: Vec<_> = images.iter().map(|img| read(img, SIZE)).collect();
    names
        .iter()
        .map(|name| {
            readings
                .iter()
                .zip(captions)
                .map(|(r, caption)| {
                    Ok(match name.as_str() {
                        "style_b" => f64::from(u8::from(r.style == Style::Striped)),
                        "stripes" => r.stripe_score as f64,
                        "fidelity" => f64::from(u8::from(r.subject.is_some() && r.subject == Subject::parse(caption))),
                        other => bail!(
                            "[online.rewards] {other:?}: the built-in model's rewards are {}",
                            ToyTask::REWARDS.join(", ")
                        ),
                    })
                })
                .collect()
        })
        .collect()
}
