//! Preference losses behind one small trait.
//!
//! A method turns per-row denoising errors of the policy (and, if it asks for one, of a
//! frozen reference), their labels and timesteps, and the predictions when it asks for them,
//! into a loss and named metrics. Adding a method is one file with a `build` function plus
//! one line in [`REGISTRY`], the only place its name appears.

pub mod diagnostics;
mod dmpo;
mod dpo;
mod dpo_hinge;
mod dspo;
mod input;
mod ipo;
mod kto;
mod mapo;
pub mod odds;
pub mod online;
mod sft;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use anyhow::{Result, bail};
use burn::tensor::{DType, Device, Tensor};

pub use input::{Layout, LossInput, Needs, Predictions};

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
        let dtype = loss_dtype(&pred.device());
        Self::from_prediction_in(pred, target, with_rejected, dtype)
    }

    /// As [`Errors::from_prediction`], with the loss arithmetic in `dtype`.
    pub fn from_prediction_in(pred: Tensor<4>, target: Tensor<4>, with_rejected: bool, dtype: DType) -> Self {
        let per_sample = per_sample_errors_in(pred, target, dtype);
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
    /// What the method reads; nothing else is computed or kept for it.
    fn needs(&self) -> Needs;
    /// The loss and the method's own metrics ([`diagnostics`] adds the common ones).
    fn compute(&self, input: &LossInput) -> LossOutput;
}

/// A built method: its registry name, what it needs, and the loss.
#[derive(Debug)]
pub struct Method {
    pub name: &'static str,
    pub needs: Needs,
    loss: Box<dyn PreferenceLoss>,
}

impl Method {
    /// Whether the rejected half of each pair is run through the model at all.
    pub fn uses_rejected(&self) -> bool {
        self.needs.rejected
    }

    /// Whether a frozen reference model must be built and run.
    pub fn uses_reference(&self) -> bool {
        self.needs.reference
    }

    /// The loss, the method's metrics, then the diagnostics every method logs.
    pub fn compute(&self, input: &LossInput) -> LossOutput {
        let mut out = self.loss.compute(input);
        for (k, v) in diagnostics::common(input) {
            if !out.metrics.iter().any(|(n, _)| *n == k) {
                out.metrics.push((k, v));
            }
        }
        out
    }
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

    /// `key = value` unless the caller set `key` (an objective's default, see
    /// `ObjectiveName::method_defaults`).
    pub fn with_default(mut self, key: &str, value: f64) -> Self {
        self.values.entry(key.to_string()).or_insert(value);
        self
    }

    pub fn take(&mut self, key: &str, default: f64) -> f64 {
        self.values.remove(key).unwrap_or(default)
    }

    pub fn finish(self, method: &str, known: &[&str]) -> Result<()> {
        if let Some(k) = self.values.keys().next() {
            bail!("method {method} has no parameter {k:?} (it takes: {})", known.join(", "));
        }
        Ok(())
    }
}

type Builder = fn(&mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])>;

/// Every method by name.
pub const REGISTRY: &[(&str, Builder)] = &[
    ("sft", sft::build),
    ("dpo", dpo::build),
    ("mapo", mapo::build),
    ("ipo", ipo::build),
    ("dpo_hinge", dpo_hinge::build),
    ("dmpo", dmpo::build),
    ("dspo", dspo::build),
    ("kto", kto::build),
];

/// The registry's names, in order.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|(n, _)| *n).collect()
}

/// The methods that train on unpaired rows (one labelled image each), not only on pairs.
pub fn unpaired_names() -> Vec<&'static str> {
    names().into_iter().filter(|n| build(n, Params::default()).is_ok_and(|m| !m.needs.pairs)).collect()
}

pub fn build(name: &str, mut params: Params) -> Result<Method> {
    let Some(&(name, builder)) = REGISTRY.iter().find(|(n, _)| *n == name) else {
        bail!("unknown method {name:?} (known: {})", names().join(", "));
    };
    let (loss, known) = builder(&mut params)?;
    params.finish(name, known)?;
    Ok(Method { name, needs: loss.needs(), loss })
}

/// The precision of per-sample errors and loss arithmetic: f64 where the backend's f64
/// arithmetic, transcendental functions included, is real; f32 elsewhere. These are a few
/// numbers per pair, so the cost is nil. The f32 path is written to be accurate on its own
/// (see [`odds`]); f64 is a bonus, never a requirement.
///
/// Asked of the device, not assumed from its name: Vulkan (wgpu) reports f64 support, but
/// its `exp`/`log` are defined for 16/32-bit floats only and return 0 for f64.
pub fn loss_dtype(device: &Device) -> DType {
    static KNOWN: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());
    let key = format!("{device:?}");
    if let Some(&(_, ok)) = KNOWN.lock().unwrap().iter().find(|(k, _)| *k == key) {
        return if ok { DType::F64 } else { DType::F32 };
    }
    let ok = device.supports_dtype(DType::F64) && f64_math_works(device);
    KNOWN.lock().unwrap().push((key, ok));
    if ok { DType::F64 } else { DType::F32 }
}

/// One tiny computation with the functions the losses use, compared with the host's f64.
fn f64_math_works(device: &Device) -> bool {
    let xs = [0.5f32, -2.0, 3.0];
    let probe = std::panic::catch_unwind(|| {
        let x = Tensor::<1>::from_floats(xs, device).cast(DType::F64);
        let y = x.clone().exp() + x.abs().log1p();
        y.into_data().convert::<f64>().try_to_vec::<f64>().ok()
    });
    let Ok(Some(got)) = probe else { return false };
    let want = xs.map(|x| f64::from(x).exp() + f64::from(x).abs().ln_1p());
    got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 1e-12 * w.abs())
}

/// `mean over (C,h,w) of (pred − target)²` per sample, in [`loss_dtype`]. Reduced in two
/// stages (over w, then over the rest) so that f32 sums of 10⁵ terms keep ~7 digits: DPO's
/// β = 5000 multiplies their rounding.
pub fn per_sample_errors(pred: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    let dtype = loss_dtype(&pred.device());
    per_sample_errors_in(pred, target, dtype)
}

/// As [`per_sample_errors`], in `dtype`.
pub fn per_sample_errors_in(pred: Tensor<4>, target: Tensor<4>, dtype: DType) -> Tensor<1> {
    let diff = pred.cast(dtype) - target.cast(dtype);
    let [b, c, h, w] = diff.dims();
    let rows = diff.square().reshape([b, c * h, w]).mean_dim(2);
    rows.reshape([b, c * h]).mean_dim(1).reshape([b])
}

/// `log σ(z)`, stable for large |z|: `min(z, 0) − ln(1 + e^{−|z|})`.
pub fn log_sigmoid(z: Tensor<1>) -> Tensor<1> {
    z.clone().clamp_max(0.0) - z.abs().neg().exp().log1p()
}

/// σ(z), stable for large |z|.
pub fn sigmoid(z: Tensor<1>) -> Tensor<1> {
    log_sigmoid(z).exp()
}

/// `ln(1 + eᶻ)`, stable for large |z|: `max(z, 0) + ln(1 + e^{−|z|})`.
pub fn softplus(z: Tensor<1>) -> Tensor<1> {
    z.clone().clamp_min(0.0) + z.abs().neg().exp().log1p()
}

/// A [1] f32 tensor for the outside world.
pub fn scalar_out(t: Tensor<1>) -> Tensor<1> {
    t.cast(DType::F32).reshape([1])
}
