//! The online loop: per iteration, sample the groups (policy for GRPO, old policy for NFT,
//! reference for online pairs), score them, train on them, then let the old policy follow
//! (NFT) or refresh the reference (online pairs, every `ref_update_steps`); one metrics line,
//! the hook (the experiment's evaluation), and checkpoints as offline runs write them, with
//! the old policy and a refreshed reference beside the weights. Every random draw is keyed
//! by (seed, iteration, ...) (`online::rng`), so a resumed run continues exactly.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};

use super::learner::{Learner, LrPlan, PassContext, PassLog};
use super::rollouts::{self, Rollouts};
use super::task::{Task, ToyTask};
use super::{grpo, nft, pairs};
use crate::family::{Family, TrainDenoiser};
use crate::losses::online::OnlineMethod;
use crate::losses::online::advantages::advantages;
use crate::losses::{Method, Params, build};
use crate::models::flux::FluxTransformer2DModel;
use crate::models::lora::disable_adapters;
use crate::models::named::{for_each_param, set_params};
use crate::models::sd3::SD3Transformer2DModel;
use crate::models::unet::UNet2DConditionModel;
use crate::objective::{Objective, ObjectiveName};
use crate::sample::ddim::DdimSchedule;
use crate::sample::flow_euler::FlowMatchEuler;
use crate::sample::rollout::Stepper;
use crate::train::checkpoint::{self, CheckpointState};
use crate::train::config::TrainConfig;
use crate::train::online_config::OnlineConfig;
use crate::train::run::{Start, StepHook, claim_output, warn};
use crate::train::setup::{Models, load_models, method_params, write_run_state};
use crate::train::step::Execution;
use crate::train::trainer::save_final;

/// What the run trains with.
enum Kind {
    Rollout(OnlineMethod),
    /// Online pairs for an offline pair method.
    Pairs(Box<Method>),
}

impl Kind {
    fn of(config: &TrainConfig, objective: ObjectiveName) -> Result<Self> {
        if OnlineMethod::is_online(&config.method) {
            return Ok(Self::Rollout(OnlineMethod::build(
                &config.method,
                Params::from_map(config.method_params.clone()),
            )?));
        }
        let params = method_params(&config.method, objective, Params::from_map(config.method_params.clone()));
        let method = build(&config.method, params)?;
        ensure!(
            method.needs.pairs,
            "method {} trains on unpaired labelled images; online pairs need a pair method (chosen vs rejected)",
            method.name
        );
        Ok(Self::Pairs(Box::new(method)))
    }

    /// Whether the frozen (or refreshed) reference model takes part.
    fn uses_reference(&self) -> bool {
        match self {
            Self::Rollout(m) => m.uses_reference(),
            // The reference samples the pairs (flow_grpo's online DPO), whatever the loss.
            Self::Pairs(_) => true,
        }
    }
}

/// `mapo train` with `[online]`: the family's denoiser trained online; returns the last
/// iteration's mean loss.
pub fn train(config: &TrainConfig, start: &Start) -> Result<f64> {
    crate::models::folder::set_single_file_configs(config.model_config.as_deref());
    let family = Family::detect(&config.model)?;
    let mut config = config.clone();
    if family != Family::Sdxl {
        config.objective = ObjectiveName::Flow;
    }
    match family {
        Family::Sdxl => train_with::<UNet2DConditionModel>(&config, start, &mut |_, _| Ok(())),
        Family::Sd3 => train_with::<SD3Transformer2DModel>(&config, start, &mut |_, _| Ok(())),
        Family::Flux => train_with::<FluxTransformer2DModel>(&config, start, &mut |_, _| Ok(())),
    }
}

/// The task of a run: the built-in model's grammar, or a diffusers model's prompt suite.
fn task_for(config: &TrainConfig, online: &OnlineConfig, device: &Device) -> Result<Box<dyn Task>> {
    Ok(match &online.prompts {
        None => Box::new(ToyTask::load(&config.model, device)?),
        Some(_) => Box::new(super::suite::SuiteTask::load(&config.model, online, device)?),
    })
}

/// [`train`], calling `hook` after every iteration.
pub fn train_with<M: TrainDenoiser>(config: &TrainConfig, how: &Start, hook: &mut StepHook<M>) -> Result<f64> {
    let online = config.online.as_ref().context("an online run needs [online]")?;
    ensure!(
        config.devices.len() <= 1,
        "online runs train on one device for now (devices has {})",
        config.devices.len()
    );
    let objective = config.objective()?;
    let kind = Kind::of(config, objective.name())?;
    // The rollouts' step: the flow SDE, or DDIM with η for ε-models; NFT samples with the
    // deterministic solver and no guidance (DiffusionNFT), the others at `guidance`.
    let nft = matches!(kind, Kind::Rollout(OnlineMethod::Nft { .. }));
    let guidance = if nft { 1.0 } else { online.guidance };
    let sampling = match (&objective, &kind) {
        (Objective::Flow(_), Kind::Rollout(OnlineMethod::Ddpo { .. })) => bail!(
            "method ddpo trains ε-prediction models (DDIM with η); this run's objective is flow: use grpo (Flow-GRPO) \
             or nft"
        ),
        (Objective::Flow(flow), _) => {
            let sigmas =
                FlowMatchEuler::new(online.sampling_steps, flow.config.shift, flow.num_train_timesteps())?.sigmas;
            Stepper::Flow { sigmas, noise_level: if nft { 0.0 } else { online.noise_level } }
        }
        (Objective::Epsilon(_), Kind::Rollout(m @ (OnlineMethod::Grpo { .. } | OnlineMethod::Nft { .. }))) => bail!(
            "method {} trains flow-matching models; this run's objective is ε-prediction: use ddpo (or objective = \
             \"flow\" for the built-in model)",
            m.name()
        ),
        (Objective::Epsilon(schedule), _) => {
            let ddim = DdimSchedule::new(schedule, online.sampling_steps, "leading", 1, false, None)?;
            Stepper::Ddim {
                timesteps: ddim.timesteps.iter().map(|&t| t as i64).collect(),
                alphas_cumprod: schedule.alphas_cumprod.iter().map(|&a| a as f64).collect(),
                eta: online.eta,
            }
        }
    };
    let lora = config.lora.is_some();
    let Models { base_dtype, mut ranks, compute, unet_config, unet_dir, start, .. } =
        load_models::<M>(config, how, kind.uses_reference() && !lora)?;
    let rank = ranks.remove(0);
    let plain = rank.plain.clone();
    let task = task_for(config, online, &plain)?;
    let _lock = claim_output(config, how)?;
    let metrics_path = write_run_state(config, start.step)?;
    let mut learner = Learner {
        policy: rank.unet,
        device: rank.device,
        optimizer: rank.optimizer,
        max_grad_norm: config.max_grad_norm,
    };

    // The reference: the base (LoRA: adapters off; full: the folder's weights), or the
    // checkpoint's refreshed one; NFT's old policy: the policy, or the checkpoint's.
    let mut reference = match (rank.reference, kind.uses_reference()) {
        (Some(r), _) => Some(r),
        (None, true) => Some(disable_adapters(learner.policy.valid())),
        (None, false) => None,
    };
    let refreshes = matches!(kind, Kind::Pairs(_)) && online.ref_update_steps > 0;
    let mut old = nft.then(|| learner.policy.valid());
    if let Some(dir) = &start.dir {
        if refreshes {
            reference = Some(checkpoint::load_extra(dir, "reference", learner.policy.valid(), &plain)?);
        }
        if old.is_some() {
            old = Some(checkpoint::load_extra(dir, "old_policy", learner.policy.valid(), &plain)?);
        }
    }

    let bar = ProgressBar::new(online.iterations as u64).with_position(start.step as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} iterations [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("template"),
    );
    let earlier_wall = crate::util::read_jsonl(&metrics_path).last().and_then(|l| l["wall_s"].as_f64()).unwrap_or(0.0);
    let t_run = Instant::now();
    let exec = Execution { dtype: compute, checkpointing: config.gradient_checkpointing };
    // Updates per iteration: a batch of samples (GRPO, NFT) or of pairs (one per group).
    let rows = match kind {
        Kind::Pairs(_) => online.prompts_per_iteration,
        Kind::Rollout(_) => online.samples(),
    };
    let lr = LrPlan {
        base: config.optimizer.lr,
        schedule: config.lr_schedule,
        total: online.iterations * online.inner_epochs * rows.div_ceil(config.batch_size),
        warmup: config.warmup_steps,
    };
    let mut last_loss = f64::NAN;
    for it in start.step..online.iterations {
        let t0 = Instant::now();
        let current;
        let sampler: &M = match &kind {
            Kind::Rollout(OnlineMethod::Nft { .. }) => old.as_ref().expect("NFT keeps an old policy"),
            Kind::Rollout(_) => {
                current = learner.policy.valid();
                &current
            }
            Kind::Pairs(_) => reference.as_ref().expect("online pairs keep a reference"),
        };
        let model = super::learner::Cast { model: sampler, dtype: compute };
        let ro = rollouts::sample(
            &model,
            task.as_ref(),
            online,
            config.seed,
            it,
            &sampling,
            guidance,
            config.batch_size,
            &plain,
        )?;
        let rewards = rollouts::score(task.as_ref(), online, &ro)?;
        let sample_s = t0.elapsed().as_secs_f64();
        if rewards.dropped > 0 {
            warn(
                &bar,
                &format!(
                    "iteration {}: {} of {} samples had a non-finite reward and were dropped",
                    it + 1,
                    rewards.dropped,
                    rewards.total.len()
                ),
            );
        }
        let cx = PassContext { config: online, seed: config.seed, it, batch_size: config.batch_size, lr, exec };
        let t1 = Instant::now();
        let kept = rewards.kept();
        let (log, extra) = train_iteration(
            &mut learner,
            &kind,
            reference.as_ref(),
            old.as_ref(),
            &objective,
            &ro,
            &rewards,
            &kept,
            &cx,
        )?;
        let train_s = t1.elapsed().as_secs_f64();

        if let (Some(o), Kind::Rollout(OnlineMethod::Nft { decay_rate, max_decay, .. })) = (old.take(), &kind) {
            let d = (decay_rate * it as f64).min(*max_decay);
            old = Some(follow(o, &learner.policy.valid(), d, lora));
        }
        if refreshes && (it + 1) % online.ref_update_steps == 0 {
            reference = Some(learner.policy.valid());
        }
        let updates = log.updates + log.skipped;
        let loss = if updates > 0 { log.loss_sum / updates as f64 } else { f64::NAN };
        last_loss = loss;
        let mut line = serde_json::json!({
            "step": it + 1, "iteration": it + 1, "loss": loss,
            "lr": lr.at(learner.optimizer.step.saturating_sub(1) as usize),
            "grad_norm": if log.updates > 0 { log.grad_norm_sum / log.updates as f64 } else { f64::NAN },
            "updates": log.updates, "skipped_updates": log.skipped,
            "samples": rewards.total.len(), "dropped_samples": rewards.dropped,
            "sample_s": sample_s, "train_s": train_s, "step_time_s": t0.elapsed().as_secs_f64(),
            "wall_s": earlier_wall + t_run.elapsed().as_secs_f64(),
        });
        let (mean, std) = mean_std(kept.iter().map(|&i| rewards.total[i]));
        line["reward"] = serde_json::json!(mean);
        line["reward_std"] = serde_json::json!(std);
        for (name, scores) in &rewards.each {
            let (m, s) = mean_std(kept.iter().map(|&i| scores[i]));
            line[format!("reward_{name}")] = serde_json::json!(m);
            line[format!("reward_{name}_std")] = serde_json::json!(s);
        }
        for (k, v) in extra.into_iter().chain(log.metrics.means().map(|(k, v)| (k.to_string(), v))) {
            line[k] = serde_json::json!(v);
        }
        if let Some(rss) = crate::util::peak_rss() {
            line["peak_rss_bytes"] = serde_json::json!(rss);
        }
        if let Some(usage) = plain.memory_pool_usage() {
            line["peak_memory_reserved_bytes"] = serde_json::json!(usage.bytes_reserved);
        }
        crate::util::append_jsonl(&metrics_path, &line)?;
        bar.set_message(format!("reward {mean:.4}"));
        bar.inc(1);

        let done = it + 1;
        hook(done, &learner.policy)?;
        if (config.checkpoint_every > 0 && done % config.checkpoint_every == 0) || done == online.iterations {
            let state = CheckpointState {
                step: done,
                optimizer_step: learner.optimizer.step,
                bad_in_a_row: 0,
                seed: config.seed,
                micro_batches_done: done * config.grad_accumulation,
                data_cursor: None,
                data_position: None,
                ranks: 1,
            };
            let mut extras: Vec<(&str, &M)> = Vec::new();
            if let Some(o) = &old {
                extras.push(("old_policy", o));
            }
            if refreshes && let Some(r) = &reference {
                extras.push(("reference", r));
            }
            checkpoint::save(
                &config.output_dir,
                &state,
                &learner.policy,
                &extras,
                &unet_config,
                &learner.optimizer,
                config.keep_checkpoints,
                lora,
            )?;
        }
    }
    bar.finish();
    save_final(config, &learner.policy, &unet_config, base_dtype, &unet_dir)?;
    Ok(last_loss)
}

/// One iteration's training on its rollouts; returns the pass's log and the iteration's
/// own statistics (advantages, pairs).
#[allow(clippy::too_many_arguments)]
fn train_iteration<M: TrainDenoiser>(
    learner: &mut Learner<M>,
    kind: &Kind,
    reference: Option<&M>,
    old: Option<&M>,
    objective: &Objective,
    ro: &Rollouts,
    rewards: &rollouts::Rewards,
    kept: &[usize],
    cx: &PassContext,
) -> Result<(PassLog, Vec<(String, f64)>)> {
    if kept.is_empty() {
        return Ok((PassLog::default(), Vec::new()));
    }
    let mut stats = Vec::new();
    let log = match kind {
        Kind::Rollout(method) => {
            let r: Vec<f64> = kept.iter().map(|&i| rewards.total[i]).collect();
            let g: Vec<i64> = kept.iter().map(|&i| ro.group[i]).collect();
            let adv = advantages(&r, &g, method.adv_clip_max())?;
            let (abs, _) = mean_std(adv.iter().map(|a| a.abs()));
            stats.push(("advantage_abs".to_string(), abs));
            stats.push(("zero_advantage".to_string(), adv.iter().filter(|a| **a == 0.0).count() as f64));
            match *method {
                OnlineMethod::Grpo { clip_range, kl_beta, .. } => {
                    grpo::pass(learner, reference, ro, kept, &adv, clip_range, kl_beta, cx)
                }
                OnlineMethod::Ddpo { clip_range, .. } => grpo::pass(learner, None, ro, kept, &adv, clip_range, 0.0, cx),
                OnlineMethod::Nft { beta, ref_beta, adv_clip_max, .. } => {
                    let old = old.expect("NFT keeps an old policy");
                    let p = nft::NftParams { beta, ref_beta, adv_clip_max };
                    nft::pass(learner, old, reference, ro, kept, &adv, p, cx)
                }
            }
        }
        Kind::Pairs(method) => {
            let found = pairs::best_and_worst(&ro.group, &rewards.total, kept);
            stats.push(("pairs".to_string(), found.len() as f64));
            let margin = found.iter().map(|&(w, l)| rewards.total[w] - rewards.total[l]);
            stats.push(("pair_reward_margin".to_string(), mean_std(margin).0));
            pairs::pass(learner, reference, method, objective, ro, &found, cx)
        }
    };
    Ok((log, stats))
}

/// θ_old ← d·θ_old + (1 − d)·θ over the trained parameters (LoRA: the adapters).
fn follow<M: TrainDenoiser>(old: M, policy: &M, d: f64, lora: bool) -> M {
    let trained = |name: &str| !lora || crate::models::lora::is_adapter(name);
    let mut current = BTreeMap::new();
    for_each_param(policy, |name, t, _| {
        if trained(&name) {
            current.insert(name, t);
        }
    });
    let mut next = BTreeMap::new();
    for_each_param(&old, |name, t, _| {
        if let Some(theta) = current.remove(&name) {
            next.insert(name, t.mul_scalar(d) + theta.mul_scalar(1.0 - d));
        }
    });
    set_params(old, &next)
}

/// Population mean and standard deviation (NaN when empty).
fn mean_std(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let v: Vec<f64> = values.collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (mean, (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{DType, Tensor};

    /// The old policy follows θ by θ_old ← d·θ_old + (1 − d)·θ, parameter by parameter.
    #[test]
    fn the_old_policy_follows_by_the_decay() {
        let device = Device::default();
        let config = crate::toy::model::unet_config();
        let load = |seed: u64| {
            device.seed(seed);
            let w = crate::models::weights::Weights::random(&device, DType::F32);
            UNet2DConditionModel::load(&serde_json::from_value(config.clone()).unwrap(), &w).unwrap()
        };
        let (old, theta) = (load(1), load(2));
        let mixed = follow(old.clone(), &theta, 0.25, false);
        let flat = |m: &UNet2DConditionModel| {
            let mut v = Vec::new();
            for_each_param(m, |_, t: Tensor<1>, _| {
                v.extend(t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
            });
            v
        };
        let (o, t, m) = (flat(&old), flat(&theta), flat(&mixed));
        assert_eq!(m.len(), o.len());
        let worst = o.iter().zip(&t).zip(&m).map(|((o, t), m)| (m - (0.25 * o + 0.75 * t)).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-6, "{worst}");
        assert!(o != m, "the mix differs from the old policy");
    }
}
