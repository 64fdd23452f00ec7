//! Preference losses behind one small trait.
//!
//! A method turns per-sample denoising errors of the policy (and, if it asks for one, of a
//! frozen reference) into a loss and named metrics. Adding a method is one file with a
//! `build` function plus one line in [`REGISTRY`].

mod dpo;
mod mapo;
mod sft;

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};
use burn::tensor::{DType, Device, Tensor};

/// Per-pair denoising errors `L = mean over (C,h,w) of (ε_θ − ε)²`.
#[derive(Debug, Clone)]
pub struct Errors {
    /// [B] errors of the chosen images.
    pub chosen: Tensor<1>,
    /// [B] errors of the rejected images (absent for methods that do not use them).
    pub rejected: Option<Tensor<1>>,
}

impl Errors {
    /// From a prediction and a target laid out as `[chosen rows; rejected rows]`
    /// (or chosen rows only when `with_rejected` is false).
    pub fn from_prediction(pred: Tensor<4>, target: Tensor<4>, with_rejected: bool) -> Self {
        let per_sample = per_sample_errors(pred, target);
        if !with_rejected {
            return Self { chosen: per_sample, rejected: None };
        }
        let mut halves = per_sample.chunk(2, 0);
        let rejected = halves.pop();
        Self { chosen: halves.pop().expect("two halves"), rejected }
    }

    pub fn rejected(&self) -> &Tensor<1> {
        self.rejected.as_ref().expect("this method needs the rejected images' errors")
    }
}

/// A loss (shape [1], f32) and metrics to log (each [1], f32).
pub struct LossOutput {
    pub loss: Tensor<1>,
    pub metrics: Vec<(&'static str, Tensor<1>)>,
}

pub trait PreferenceLoss: fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether the rejected half of each pair is run through the model at all.
    fn uses_rejected(&self) -> bool {
        true
    }
    /// Whether a frozen reference model must be built and run.
    fn uses_reference(&self) -> bool {
        false
    }
    fn compute(&self, policy: &Errors, reference: Option<&Errors>) -> LossOutput;
}

/// Method parameters given as `key=value`; each method takes what it knows, and anything
/// left over is an error naming the key.
#[derive(Debug, Default, Clone)]
pub struct Params {
    values: BTreeMap<String, f64>,
}

impl Params {
    pub fn parse(pairs: &[String]) -> Result<Self> {
        let mut values = BTreeMap::new();
        for p in pairs {
            let Some((k, v)) = p.split_once('=') else { bail!("parameter {p:?} is not key=value") };
            let v: f64 = v.trim().parse().map_err(|_| anyhow::anyhow!("parameter {k}: {v:?} is not a number"))?;
            values.insert(k.trim().to_string(), v);
        }
        Ok(Self { values })
    }

    pub fn from_map(values: BTreeMap<String, f64>) -> Self {
        Self { values }
    }

    pub fn take(&mut self, key: &str, default: f64) -> f64 {
        self.values.remove(key).unwrap_or(default)
    }

    fn finish(self, method: &str, known: &[&str]) -> Result<()> {
        if let Some(k) = self.values.keys().next() {
            bail!("method {method} has no parameter {k:?} (it takes: {})", known.join(", "));
        }
        Ok(())
    }
}

type Builder = fn(&mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])>;

/// Every method by name.
pub const REGISTRY: &[(&str, Builder)] = &[("sft", sft::build), ("dpo", dpo::build), ("mapo", mapo::build)];

pub fn build(name: &str, mut params: Params) -> Result<Box<dyn PreferenceLoss>> {
    let Some((_, builder)) = REGISTRY.iter().find(|(n, _)| *n == name) else {
        let names: Vec<_> = REGISTRY.iter().map(|(n, _)| *n).collect();
        bail!("unknown method {name:?} (known: {})", names.join(", "));
    };
    let (method, known) = builder(&mut params)?;
    params.finish(name, known)?;
    Ok(method)
}

/// The precision of per-sample errors and loss arithmetic: f64 where the backend has it.
/// These are a few numbers per pair, so the cost is nil, and it keeps DPO's β = 5000 and
/// MaPO's ×1000 margin from amplifying f32 rounding of errors that differ by ~1e-3.
pub fn loss_dtype(device: &Device) -> DType {
    if device.supports_dtype(DType::F64) { DType::F64 } else { DType::F32 }
}

/// `mean over (C,h,w) of (pred − target)²` per sample, in [`loss_dtype`].
pub fn per_sample_errors(pred: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    let dtype = loss_dtype(&pred.device());
    let diff = pred.cast(dtype) - target.cast(dtype);
    let b = diff.dims()[0];
    diff.square().reshape([b as i64, -1]).mean_dim(1).reshape([b])
}

/// `log σ(z)`, stable for large |z|: `min(z, 0) − ln(1 + e^{−|z|})`.
pub fn log_sigmoid(z: Tensor<1>) -> Tensor<1> {
    z.clone().clamp_max(0.0) - z.abs().neg().exp().log1p()
}

/// A [1] f32 tensor for the outside world.
pub fn scalar_out(t: Tensor<1>) -> Tensor<1> {
    t.cast(DType::F32).reshape([1])
}
