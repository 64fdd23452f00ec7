//! One iteration's data: which prompts (groups of `group_size` samples each), their
//! trajectories from the sampling model, and the rewards of the final samples, with
//! samples a reward could not score dropped (counted, with a warning).

use anyhow::{Result, ensure};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;

use super::purpose;
use super::task::Task;
use crate::models::denoiser::Denoiser;
use crate::sample::rollout::{Stepper, Trajectory, rollout};
use crate::sample::validate::{Prompts, initial_noise};
use crate::train::online_config::OnlineConfig;

/// An iteration's samples: row i is prompt `captions[i]` of group `group[i]`.
pub struct Rollouts {
    pub captions: Vec<String>,
    pub group: Vec<i64>,
    /// The conditioning of every row, on the plain device.
    pub prompts: Prompts,
    /// States [N, C, h, w] at every σ and each transition's log-probability [N].
    pub trajectory: Trajectory,
}

/// The prompts of iteration `it`: `prompts_per_iteration` of the task's, drawn without
/// replacement (reshuffled when an iteration needs more than the list holds).
pub fn choose_prompts(task: &dyn Task, config: &OnlineConfig, seed: u64, it: usize) -> Vec<String> {
    let all = task.captions();
    let mut rng = super::rng(seed, &[it as u64, purpose::PROMPTS]);
    let mut chosen = Vec::with_capacity(config.prompts_per_iteration);
    while chosen.len() < config.prompts_per_iteration {
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.shuffle(&mut rng);
        chosen.extend(order.into_iter().take(config.prompts_per_iteration - chosen.len()).map(|i| all[i].clone()));
    }
    chosen
}

/// Row indices as an index tensor on `device`.
fn index(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(rows.iter().map(|&r| r as i64).collect::<Vec<_>>(), [rows.len()]), device)
}

/// Rows `rows` of `p` (a negative prompt's too).
pub fn select_prompts(p: &Prompts, rows: &[usize]) -> Prompts {
    let idx = index(rows, &p.context.device());
    Prompts {
        context: p.context.clone().select(0, idx.clone()),
        text_embeds: p.text_embeds.clone().select(0, idx.clone()),
        time_ids: p.time_ids.clone().map(|t| t.select(0, idx.clone())),
        negative: p.negative.clone().map(|(c, t)| (c.select(0, idx.clone()), t.select(0, idx.clone()))),
        embedded_guidance: p.embedded_guidance,
    }
}

/// `p` on the autodiff device (constants of the graph).
pub fn lift_prompts(p: &Prompts) -> Prompts {
    Prompts {
        context: Tensor::from_inner(p.context.clone()),
        text_embeds: Tensor::from_inner(p.text_embeds.clone()),
        time_ids: p.time_ids.clone().map(Tensor::from_inner),
        negative: p.negative.clone().map(|(c, t)| (Tensor::from_inner(c), Tensor::from_inner(t))),
        embedded_guidance: p.embedded_guidance,
    }
}

/// Rows `rows` of a [N, ...] tensor.
pub fn rows<const D: usize>(t: &Tensor<D>, rows: &[usize]) -> Tensor<D> {
    t.clone().select(0, index(rows, &t.device()))
}

/// Samples iteration `it`'s groups with `model` (no gradients) stepping with `stepper`,
/// `chunk` rows at a time, at `guidance`.
#[allow(clippy::too_many_arguments)]
pub fn sample(
    model: &impl Denoiser,
    task: &dyn Task,
    config: &OnlineConfig,
    seed: u64,
    it: usize,
    stepper: &Stepper,
    guidance: f64,
    chunk: usize,
    device: &Device,
) -> Result<Rollouts> {
    let prompts = choose_prompts(task, config, seed, it);
    let k = config.group_size;
    let captions: Vec<String> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), k)).collect();
    let group: Vec<i64> = (0..captions.len()).map(|i| (i / k) as i64).collect();
    // Each prompt is encoded once and repeated for its group.
    let unique = task.encode(&prompts, device)?;
    let expand: Vec<usize> = (0..captions.len()).map(|i| i / k).collect();
    let conditioning = select_prompts(&unique, &expand);
    let n = captions.len();
    let noise = initial_noise(super::mix(seed, &[it as u64, purpose::NOISE]), n, task.latent_shape(), device);
    let mut parts: Vec<Trajectory> = Vec::new();
    for (c, start) in (0..n).step_by(chunk.max(1)).enumerate() {
        let these: Vec<usize> = (start..(start + chunk).min(n)).collect();
        let step_seed = super::mix(seed, &[it as u64, purpose::STEP_NOISE, c as u64]);
        let p = select_prompts(&conditioning, &these);
        parts.push(rollout(model, &p, rows(&noise, &these), stepper, guidance, step_seed));
    }
    let steps = stepper.steps();
    let trajectory = Trajectory {
        states: (0..=steps).map(|j| Tensor::cat(parts.iter().map(|t| t.states[j].clone()).collect(), 0)).collect(),
        log_probs: (0..steps).map(|j| Tensor::cat(parts.iter().map(|t| t.log_probs[j].clone()).collect(), 0)).collect(),
        stepper: stepper.clone(),
    };
    Ok(Rollouts { captions, group, prompts: conditioning, trajectory })
}

/// The rewards of an iteration's samples.
pub struct Rewards {
    /// The weighted sum per sample; NaN for a dropped sample.
    pub total: Vec<f64>,
    /// Each reward's scores (name, per sample).
    pub each: Vec<(String, Vec<f64>)>,
    /// Samples some reward could not score (NaN or infinite): left out of training.
    pub dropped: usize,
}

impl Rewards {
    /// The rows that were scored.
    pub fn kept(&self) -> Vec<usize> {
        (0..self.total.len()).filter(|&i| self.total[i].is_finite()).collect()
    }
}

/// Scores the final samples with every configured reward and weighs them.
pub fn score(task: &dyn Task, config: &OnlineConfig, r: &Rollouts) -> Result<Rewards> {
    let names: Vec<String> = config.rewards.keys().cloned().collect();
    let known = task.reward_names();
    for name in &names {
        ensure!(
            known.contains(&name.as_str()),
            "[online.rewards] {name:?}: this model's rewards are {}",
            known.join(", ")
        );
    }
    let scores = task.score(&names, r.trajectory.sample().clone(), &r.captions)?;
    let n = r.captions.len();
    let total: Vec<f64> = (0..n)
        .map(|i| {
            let v: f64 = names.iter().zip(&scores).map(|(name, s)| config.rewards[name] * s[i]).sum();
            if v.is_finite() { v } else { f64::NAN }
        })
        .collect();
    let dropped = total.iter().filter(|v| v.is_nan()).count();
    Ok(Rewards { total, each: names.into_iter().zip(scores).collect(), dropped })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::online::advantages::advantages;

    /// A task whose second reward cannot score one image (NaN).
    struct Fake;

    impl Task for Fake {
        fn captions(&self) -> &[String] {
            &[]
        }
        fn encode(&self, _: &[String], _: &Device) -> Result<Prompts> {
            unreachable!()
        }
        fn latent_shape(&self) -> [usize; 3] {
            [1, 1, 1]
        }
        fn reward_names(&self) -> Vec<&'static str> {
            vec!["a", "b"]
        }
        fn score(&self, names: &[String], _: Tensor<4>, _: &[String]) -> Result<Vec<Vec<f64>>> {
            Ok(names
                .iter()
                .map(|n| match n.as_str() {
                    "a" => vec![1.0, 2.0, 3.0, 4.0],
                    _ => vec![0.5, f64::NAN, 0.5, 1.5],
                })
                .collect())
        }
    }

    fn rollouts() -> Rollouts {
        let device = Device::default();
        let x = Tensor::<4>::zeros([4, 1, 1, 1], &device);
        Rollouts {
            captions: vec!["p".into(); 4],
            group: vec![0, 0, 1, 1],
            prompts: Prompts {
                context: Tensor::zeros([4, 1, 1], &device),
                text_embeds: Tensor::zeros([4, 1], &device),
                time_ids: None,
                negative: None,
                embedded_guidance: None,
            },
            trajectory: Trajectory {
                states: vec![x],
                log_probs: vec![],
                stepper: Stepper::Flow { sigmas: vec![0.0], noise_level: 0.0 },
            },
        }
    }

    /// A sample some reward scores NaN is counted and left out: the weighted sum of the rest
    /// is as configured, and the advantages of the kept samples are finite.
    #[test]
    fn a_nan_reward_drops_its_sample() {
        let config: OnlineConfig =
            toml::from_str("iterations = 1\n[rewards]\na = 1.0\nb = 2.0\n").expect("a valid [online]");
        let r = score(&Fake, &config, &rollouts()).unwrap();
        assert_eq!(r.dropped, 1);
        assert_eq!(r.kept(), vec![0, 2, 3]);
        assert_eq!((r.total[0], r.total[2], r.total[3]), (2.0, 4.0, 7.0));
        assert!(r.total[1].is_nan());
        let kept = r.kept();
        let a = advantages(&kept.iter().map(|&i| r.total[i]).collect::<Vec<_>>(), &[0, 1, 1], 5.0).unwrap();
        assert!(a.iter().all(|v| v.is_finite()), "{a:?}");
        // An unknown reward name is refused, naming the ones this task has.
        let config: OnlineConfig = toml::from_str("iterations = 1\n[rewards]\nc = 1.0\n").unwrap();
        let err = score(&Fake, &config, &rollouts()).err().expect("refused").to_string();
        assert!(err.contains("\"c\"") && err.contains("a, b"), "{err}");
    }
}
