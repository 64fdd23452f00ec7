//! `mapo bench online`: one online iteration of a random-init SD3 transformer of a named
//! config (`sd35m` for the real job): sampling the groups (SDE with CFG for GRPO, the
//! guidance-free ODE for NFT), then the method's training pass, each phase timed and its
//! memory read. The conditioning is random (77 + 256 text tokens per prompt) and the reward is
//! a stand-in (each sample's mean latent, no reward model: a GPU machine has none, and a
//! reward model's cost is `mapo bench score`'s), so the figures are the sampler's and the
//! trainer's.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};
use serde_json::json;

use super::{PhaseMemory, sd3_config, tensor};
use crate::device::select;
use crate::losses::online::advantages::{CLIP, advantages};
use crate::models::lora::{LoraConfig, disable_adapters};
use crate::models::sd3::SD3Transformer2DModel;
use crate::models::weights::Weights;
use crate::online::learner::{Cast, Learner, LrPlan, PassContext};
use crate::online::rollouts;
use crate::online::task::Task;
use crate::sample::flow_euler::FlowMatchEuler;
use crate::sample::validate::Prompts;
use crate::train::online_config::OnlineConfig;
use crate::train::optim::{Optimizer, OptimizerConfig};
use crate::train::step::Execution;

#[derive(clap::Args, Debug)]
pub struct OnlineBench {
    /// `grpo` or `nft`.
    #[arg(long, default_value = "grpo", value_parser = ["grpo", "nft"])]
    pub method: String,
    /// An SD3 transformer config: tiny-sd3, sd3m, sd35m, sd35l, or its config.json.
    #[arg(long, default_value = "tiny-sd3")]
    pub model: String,
    #[arg(long, default_value_t = 512)]
    pub resolution: usize,
    /// Prompts (groups) in the iteration.
    #[arg(long, default_value_t = 1)]
    pub prompts: usize,
    /// Samples per prompt.
    #[arg(long, default_value_t = 4)]
    pub group: usize,
    /// Samples per sampling chunk and per optimizer update.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    #[arg(long, default_value_t = 10)]
    pub sampling_steps: usize,
    /// LoRA rank (flow_grpo: 32); full fine-tuning without it.
    #[arg(long)]
    pub lora: Option<usize>,
    #[arg(long, alias = "gradient-checkpointing")]
    pub grad_ckpt: bool,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
}

/// Random prompt conditioning and the stand-in reward.
struct BenchTask {
    captions: Vec<String>,
    text: [usize; 2],
    pooled: usize,
    latent: [usize; 3],
}

impl Task for BenchTask {
    fn captions(&self) -> &[String] {
        &self.captions
    }

    fn encode(&self, captions: &[String], device: &Device) -> Result<Prompts> {
        let n = captions.len();
        let [tokens, d] = self.text;
        Ok(Prompts {
            context: tensor(11, [n, tokens, d], device),
            text_embeds: tensor(12, [n, self.pooled], device),
            time_ids: None,
            negative: Some((tensor(13, [n, tokens, d], device), tensor(14, [n, self.pooled], device))),
            embedded_guidance: None,
        })
    }

    fn latent_shape(&self) -> [usize; 3] {
        self.latent
    }

    fn reward_names(&self) -> Vec<&'static str> {
        vec!["mean_latent"]
    }

    fn score(&self, _: &[String], latents: Tensor<4>, _: &[String]) -> Result<Vec<Vec<f64>>> {
        let n = latents.dims()[0];
        let means: Vec<f32> = latents
            .reshape([n as i32, -1])
            .mean_dim(1)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(vec![means.into_iter().map(f64::from).collect()])
    }
}

pub fn run(b: &OnlineBench) -> Result<serde_json::Value> {
    let Some(config) = sd3_config(&b.model)? else {
        bail!(
            "--model {}: bench online takes an SD3 transformer config (tiny-sd3, sd3m, sd35m, sd35l, or a config.json)",
            b.model
        )
    };
    if !b.resolution.is_multiple_of(8 * config.patch_size) {
        bail!("--resolution must be a multiple of {}", 8 * config.patch_size);
    }
    if b.group < 2 {
        bail!("--group {}: a group needs at least 2 samples", b.group);
    }
    let selected = select(b.device.device.as_deref())?;
    let plain = selected.device.clone();
    let device = plain.clone().autodiff();
    let exec = Execution { dtype: selected.precision(&b.device.dtype)?, checkpointing: b.grad_ckpt };
    let mut phases = PhaseMemory::new(&plain);
    let base_dtype = if b.lora.is_some() { exec.dtype } else { DType::F32 };
    let mut w = Weights::random(&device, base_dtype);
    if let Some(rank) = b.lora {
        w = w.with_lora(LoraConfig::new(rank));
    }
    let policy = SD3Transformer2DModel::load(&config, &w)?;
    let h = b.resolution / 8;
    policy.check_latents(h, h)?;
    let nft = b.method == "nft";
    let (guidance, noise_level) = if nft { (1.0, 0.0) } else { (4.5, 0.7) };
    let online: OnlineConfig = toml::from_str(&format!(
        "iterations = 1\ngroup_size = {}\nprompts_per_iteration = {}\nsampling_steps = {}\nguidance = {guidance}\n\
         noise_level = {noise_level}\n[rewards]\nmean_latent = 1.0\n",
        b.group, b.prompts, b.sampling_steps
    ))?;
    let task = BenchTask {
        captions: (0..b.prompts).map(|i| format!("prompt {i}")).collect(),
        text: [77 + 256, config.joint_attention_dim],
        pooled: config.pooled_projection_dim,
        latent: [config.in_channels, h, h],
    };
    let sigmas = FlowMatchEuler::new(b.sampling_steps, 3.0, 1000)?.sigmas;
    let stepper = crate::sample::rollout::Stepper::Flow { sigmas, noise_level };
    let frozen = policy.valid();
    let reference = if b.lora.is_some() { disable_adapters(frozen.clone()) } else { frozen.clone() };
    let mut learner =
        Learner { policy, device, optimizer: Optimizer::new(OptimizerConfig::adamw(3e-4)), max_grad_norm: 1.0 };
    phases.end("build");

    plain.sync()?;
    let t0 = Instant::now();
    let model = Cast { model: &frozen, dtype: exec.dtype };
    let ro = rollouts::sample(&model, &task, &online, 0, 0, &stepper, guidance, b.batch, &plain)?;
    let rewards = rollouts::score(&task, &online, &ro)?;
    plain.sync()?;
    let sample_s = t0.elapsed().as_secs_f64();
    phases.end("sampling");

    let kept = rewards.kept();
    let groups: Vec<i64> = kept.iter().map(|&i| ro.group[i]).collect();
    let adv = advantages(&kept.iter().map(|&i| rewards.total[i]).collect::<Vec<_>>(), &groups, CLIP)?;
    let lr = LrPlan { base: 3e-4, schedule: crate::train::lr::LrSchedule::Constant, total: 1, warmup: 0 };
    let cx = PassContext { config: &online, seed: 0, it: 0, batch_size: b.batch, lr, exec };
    let t1 = Instant::now();
    let log = if nft {
        let p = crate::online::nft::NftParams { beta: 1.0, ref_beta: 1e-4, adv_clip_max: CLIP };
        crate::online::nft::pass(&mut learner, &frozen, Some(&reference), &ro, &kept, &adv, p, &cx)
    } else {
        crate::online::grpo::pass(&mut learner, Some(&reference), &ro, &kept, &adv, 1e-4, 0.01, &cx)
    };
    plain.sync()?;
    let train_s = t1.elapsed().as_secs_f64();
    phases.end("training");
    Ok(json!({
        "bench": "online", "framework": "mapo", "method": b.method, "model": b.model, "resolution": b.resolution,
        "prompts": b.prompts, "group": b.group, "batch": b.batch, "sampling_steps": b.sampling_steps,
        "trained_steps": online.train_steps(), "dtype": b.device.dtype, "lora": b.lora, "grad_ckpt": b.grad_ckpt,
        "device": selected.backend.name(), "sample_s": sample_s, "train_s": train_s, "updates": log.updates,
        "skipped_updates": log.skipped, "iteration_s": sample_s + train_s,
        "peak_device_bytes": plain.memory_pool_usage().map(|u| u.bytes_reserved),
        "peak_rss_bytes": phases.overall_peak(), "phases": phases.json(),
    }))
}
