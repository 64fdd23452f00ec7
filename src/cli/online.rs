//! `mapo forward sde-step | advantages` and `forward loss --method grpo | nft`: the online
//! methods' pieces on tensors from a file (docs/design.md §4c), for checks by other tools.

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::ForwardArgs;
use crate::device::select;
use crate::losses::Params;
use crate::losses::online::{advantages, grpo, nft};
use crate::models::inputs::check_finite;
use crate::models::io::{SafeTensorFiles, write_tensors};
use crate::sample::sde;

/// The online losses `forward loss` takes besides the offline methods.
pub const LOSSES: [&str; 2] = ["grpo", "nft"];

struct Inputs {
    file: SafeTensorFiles,
    device: Device,
}

impl Inputs {
    fn open(args: &ForwardArgs) -> Result<Self> {
        let device = select(args.device.device.as_deref())?.device;
        Ok(Self { file: SafeTensorFiles::open_file(&args.inputs)?, device })
    }

    fn has(&self, name: &str) -> bool {
        self.file.get(name).is_some()
    }

    /// A float tensor of `D` dims, checked finite; `rows` its first dimension when given.
    fn float<const D: usize>(&self, name: &str, rows: Option<usize>) -> Result<Tensor<D>> {
        let view = self.file.get(name).with_context(|| format!("input tensor {name:?} is missing"))?;
        ensure!(view.shape.len() == D, "{name}: shape {:?}, expected {D} dimensions", view.shape);
        if let Some(b) = rows {
            ensure!(view.shape[0] == b, "{name}: {} rows, expected {b} (one per sample)", view.shape[0]);
        }
        ensure!(view.shape.iter().all(|&d| d > 0), "{name}: shape {:?} has an empty dimension", view.shape);
        let t = self.file.float::<D>(name, &self.device, DType::F32)?;
        check_finite(name, &values(t.clone())?)?;
        Ok(t)
    }

    /// A [B, C, h, w] tensor shaped like `like`.
    fn like(&self, name: &str, like: &[usize; 4]) -> Result<Tensor<4>> {
        let t = self.float::<4>(name, Some(like[0]))?;
        ensure!(t.dims() == *like, "{name}: shape {:?}, expected {like:?} (as the first input)", t.dims());
        Ok(t)
    }
}

fn values<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn data<const D: usize>(name: &str, t: Tensor<D>) -> (String, TensorData) {
    (name.to_string(), t.cast(DType::F32).into_data())
}

/// `forward sde-step [--param noise_level=A]`.
pub fn sde_step(args: &ForwardArgs) -> Result<()> {
    let mut params = Params::parse(&args.params)?;
    let noise_level = params.take("noise_level", sde::NOISE_LEVEL);
    params.finish("sde-step", &["noise_level"])?;
    ensure!(noise_level.is_finite() && noise_level >= 0.0, "noise_level {noise_level}: must be ≥ 0");
    let x = Inputs::open(args)?;
    let latents = x.float::<4>("latents", None)?;
    let shape = latents.dims();
    let b = shape[0];
    let model_output = x.like("model_output", &shape)?;
    let sigma = values(x.float::<1>("sigma", Some(b))?)?;
    let sigma_next = values(x.float::<1>("sigma_next", Some(b))?)?;
    for (i, (s, n)) in sigma.iter().zip(&sigma_next).enumerate() {
        ensure!(*s > 0.0 && *s <= 1.0, "sigma: row {i} is {s}; expected (0, 1]");
        ensure!(*n >= 0.0 && n < s, "sigma_next: row {i} is {n}; expected in [0, sigma) = [0, {s})");
        ensure!(
            *s < 1.0 || *n < 1.0,
            "sigma_next: row {i}: at sigma = 1 the scale divides by 1 − sigma_next, which must be > 0"
        );
    }
    let prev = if x.has("prev_sample") { Some(x.like("prev_sample", &shape)?) } else { None };
    let noise = match (&prev, x.has("noise")) {
        (None, true) => Some(x.like("noise", &shape)?),
        (None, false) if noise_level > 0.0 => {
            bail!("input tensor \"noise\" is missing (or give prev_sample to score it)")
        }
        _ => None,
    };
    let out = sde::sde_step(latents, model_output, noise, &sigma, &sigma_next, noise_level, prev);
    write_tensors(
        &args.out,
        vec![
            data("prev_sample", out.prev_sample),
            data("mean", out.mean),
            data("std", out.std),
            data("log_prob", out.log_prob),
        ],
    )
}

/// `forward advantages`: `rewards` [B] and `group` [B] (i64) → `advantages` [B].
pub fn advantages(args: &ForwardArgs) -> Result<()> {
    let mut params = Params::parse(&args.params)?;
    let clip = params.take("adv_clip_max", advantages::CLIP);
    params.finish("advantages", &["adv_clip_max"])?;
    let x = Inputs::open(args)?;
    let rewards: Vec<f64> = values(x.float::<1>("rewards", None)?)?.into_iter().map(f64::from).collect();
    let view = x.file.get("group").context("input tensor \"group\" is missing")?;
    ensure!(
        matches!(view.dtype, safetensors::Dtype::I64 | safetensors::Dtype::I32),
        "group: stored as {:?}; group ids must be i64 (or i32)",
        view.dtype
    );
    ensure!(
        view.shape == [rewards.len()],
        "group: shape {:?}, expected [{}] (one id per reward)",
        view.shape,
        rewards.len()
    );
    let group =
        view.to_data_any()?.convert::<i64>().try_into_vec::<i64>().map_err(|e| anyhow::anyhow!("group: {e:?}"))?;
    let a: Vec<f32> = advantages::advantages(&rewards, &group, clip)?.into_iter().map(|v| v as f32).collect();
    let n = a.len();
    write_tensors(&args.out, vec![("advantages".into(), TensorData::new(a, [n]))])
}

/// `forward loss --method grpo|nft`.
pub fn loss(name: &str, args: &ForwardArgs) -> Result<()> {
    let mut params = Params::parse(&args.params)?;
    let x = Inputs::open(args)?;
    match name {
        "grpo" => {
            let clip_range = params.take("clip_range", grpo::CLIP_RANGE);
            let kl_beta = params.take("kl_beta", grpo::KL_BETA);
            params.finish("grpo", &["clip_range", "kl_beta"])?;
            ensure!(clip_range >= 0.0 && kl_beta >= 0.0, "clip_range and kl_beta must be ≥ 0");
            let log_prob = x.float::<1>("log_prob", None)?;
            let b = log_prob.dims()[0];
            let old = x.float::<1>("old_log_prob", Some(b))?;
            let adv = x.float::<1>("advantages", Some(b))?;
            let means = if kl_beta > 0.0 {
                let mean = x.float::<4>("mean", Some(b))?;
                let shape = mean.dims();
                let s = x.float::<1>("s", Some(b))?;
                ensure!(values(s.clone())?.iter().all(|v| *v > 0.0), "s: the KL term divides by 2·s², s must be > 0");
                Some((mean, x.like("ref_mean", &shape)?, s))
            } else {
                None
            };
            let out = grpo::grpo_loss(log_prob, old, adv, clip_range, kl_beta, means);
            write_tensors(
                &args.out,
                vec![
                    data("loss", out.loss),
                    data("policy_loss", out.policy_loss),
                    data("kl", out.kl),
                    data("clip_fraction", out.clip_fraction),
                ],
            )
        }
        "nft" => {
            let beta = params.take("beta", nft::BETA);
            let ref_beta = params.take("ref_beta", nft::REF_BETA);
            params.finish("nft", &["beta", "ref_beta"])?;
            ensure!(beta > 0.0 && ref_beta >= 0.0, "beta must be > 0 and ref_beta ≥ 0");
            let pred = x.float::<4>("model_pred", None)?;
            let shape = pred.dims();
            let b = shape[0];
            let reward = x.float::<1>("reward", Some(b))?;
            ensure!(values(reward.clone())?.iter().all(|r| (0.0..=1.0).contains(r)), "reward: r must be in [0, 1]");
            let ref_pred = if ref_beta > 0.0 { Some(x.like("ref_pred", &shape)?) } else { None };
            let loss = nft::nft_loss(
                pred,
                x.like("old_pred", &shape)?,
                ref_pred,
                x.like("x0", &shape)?,
                x.like("noisy", &shape)?,
                x.float::<1>("sigma", Some(b))?,
                reward,
                beta,
                ref_beta,
            );
            write_tensors(&args.out, vec![data("loss", loss)])
        }
        other => bail!("{other} is not an online loss ({})", LOSSES.join(", ")),
    }
}
