//! Optimizers with PyTorch's semantics and every hyper-parameter explicit (Burn's AdamW
//! defaults differ from PyTorch's). State is keyed by the parameter's diffusers name so
//! that checkpoints stay readable and survive a rebuild of the module.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{GradientCheckpointingStrategy, Tensor};

use crate::models::named::segment;

/// `optimizer.name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerName {
    Adamw,
    Adafactor,
    Sgd,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerConfig {
    /// `torch.optim.AdamW` (decoupled weight decay).
    AdamW { lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
    /// Plain SGD: no momentum, no weight decay.
    Sgd { lr: f64 },
    /// `transformers.Adafactor` with a fixed learning rate (`relative_step=False`,
    /// `warmup_init=False`, no first moment), as Diffusion-DPO trains SDXL.
    Adafactor { lr: f64, weight_decay: f64, clip_threshold: f64, scale_parameter: bool },
}

impl OptimizerConfig {
    /// MaPO's reference settings: AdamW .9/.999, eps 1e-8, weight decay 1e-2.
    pub fn adamw(lr: f64) -> Self {
        OptimizerConfig::AdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }

    /// The one place an optimizer is built from its settings, for the TOML config and the
    /// CLI alike: `betas` = (β1, β2, eps) for AdamW; `weight_decay` defaults to 1e-2 for
    /// AdamW and 0 for Adafactor, and is an error for SGD (plain, as docs/design.md §2 fixes it).
    pub fn build(name: OptimizerName, lr: f64, betas: (f64, f64, f64), weight_decay: Option<f64>) -> Result<Self> {
        Ok(match name {
            OptimizerName::Adamw => {
                let (beta1, beta2, eps) = betas;
                OptimizerConfig::AdamW { lr, beta1, beta2, eps, weight_decay: weight_decay.unwrap_or(1e-2) }
            }
            OptimizerName::Adafactor => OptimizerConfig::Adafactor {
                lr,
                weight_decay: weight_decay.unwrap_or(0.0),
                clip_threshold: 1.0,
                scale_parameter: false,
            },
            OptimizerName::Sgd => {
                if weight_decay.is_some_and(|w| w != 0.0) {
                    bail!("sgd is plain SGD: it takes no weight decay (remove weight_decay)");
                }
                OptimizerConfig::Sgd { lr }
            }
        })
    }

    /// [`Self::build`] from a name (the CLI's `--optimizer`), with AdamW's default betas.
    pub fn parse(name: &str, lr: f64, weight_decay: Option<f64>) -> Result<Self> {
        let name: OptimizerName = serde_json::from_value(serde_json::Value::String(name.into()))
            .map_err(|_| anyhow::anyhow!("unknown optimizer {name:?} (expected adamw, adafactor or sgd)"))?;
        Self::build(name, lr, (0.9, 0.999, 1e-8), weight_decay)
    }

    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::AdamW { lr, .. } | OptimizerConfig::Sgd { lr } | OptimizerConfig::Adafactor { lr, .. } => {
                *lr
            }
        }
    }
}

/// An optimizer and its state per parameter (AdamW: first and second moments; Adafactor:
/// row and column second-moment factors, or the full second moment and an empty tensor
/// for 1-d parameters), and the step count.
#[derive(Debug)]
pub struct Optimizer {
    pub config: OptimizerConfig,
    pub step: u64,
    pub moments: BTreeMap<String, (Tensor<1>, Tensor<1>)>,
}

/// `sqrt(mean(x²))` as a [1] tensor (stays on the device).
fn rms(x: &Tensor<1>) -> Tensor<1> {
    x.clone().square().mean().sqrt()
}

impl Optimizer {
    pub fn new(config: OptimizerConfig) -> Self {
        Self { config, step: 0, moments: BTreeMap::new() }
    }

    /// One update of every parameter that has a gradient, with gradients scaled by
    /// `grad_scale` (the clipping coefficient) and the learning rate `lr`.
    pub fn step<M: Module>(&mut self, module: M, grads: &GradMap, grad_scale: f64, lr: f64) -> M {
        self.step += 1;
        let mut mapper = Apply { path: Vec::new(), grads, grad_scale, lr, opt: self };
        module.map(&mut mapper)
    }

    fn update(&mut self, name: &str, w: Tensor<1>, g: Tensor<1>, lr: f64, shape: &[usize]) -> Tensor<1> {
        match self.config {
            OptimizerConfig::Adafactor { weight_decay, clip_threshold, scale_parameter, .. } => {
                let t = self.step as f64;
                let beta2t = 1.0 - t.powf(-0.8);
                let sq = g.clone().square().add_scalar(1e-30);
                let (update, state) = if shape.len() >= 2 {
                    // Factored second moment over the last two dimensions.
                    let (r, c) = (shape[shape.len() - 2], shape[shape.len() - 1]);
                    let a = shape[..shape.len() - 2].iter().product::<usize>();
                    let sq = sq.reshape([a, r, c]);
                    let (row0, col0) = match self.moments.remove(name) {
                        Some(rc) => rc,
                        None => (Tensor::zeros([a * r], &g.device()), Tensor::zeros([a * c], &g.device())),
                    };
                    let row = row0.mul_scalar(beta2t) + sq.clone().mean_dim(2).reshape([-1]).mul_scalar(1.0 - beta2t);
                    let col = col0.mul_scalar(beta2t) + sq.mean_dim(1).reshape([-1]).mul_scalar(1.0 - beta2t);
                    let row3 = row.clone().reshape([a, r, 1]);
                    let r_factor = (row3.clone() / row3.mean_dim(1)).sqrt().recip();
                    let c_factor = col.clone().reshape([a, 1, c]).sqrt().recip();
                    ((r_factor * c_factor).reshape([-1]) * g, (row, col))
                } else {
                    let v0 = self.moments.remove(name).map(|(v, _)| v).unwrap_or_else(|| g.zeros_like());
                    let v = v0.mul_scalar(beta2t) + sq.mul_scalar(1.0 - beta2t);
                    (v.clone().sqrt().recip() * g, (v, Tensor::zeros([1], &w.device())))
                };
                self.moments.insert(name.to_string(), state);
                let update = update.clone() / rms(&update).div_scalar(clip_threshold).clamp_min(1.0);
                let lr_t = if scale_parameter {
                    rms(&w).clamp_min(1e-3).mul_scalar(lr)
                } else {
                    w.ones_like().narrow(0, 0, 1).mul_scalar(lr)
                };
                let decayed = w.clone() - w * lr_t.clone().mul_scalar(weight_decay);
                decayed - update * lr_t
            }
            OptimizerConfig::Sgd { .. } => w - g.mul_scalar(lr),
            OptimizerConfig::AdamW { beta1, beta2, eps, weight_decay, .. } => {
                let w = w.mul_scalar(1.0 - lr * weight_decay);
                let (m, v) = match self.moments.remove(name) {
                    Some(mv) => mv,
                    None => (g.zeros_like(), g.zeros_like()),
                };
                let m = m.mul_scalar(beta1) + g.clone().mul_scalar(1.0 - beta1);
                let v = v.mul_scalar(beta2) + g.square().mul_scalar(1.0 - beta2);
                let t = self.step as i32;
                let bc1 = 1.0 - beta1.powi(t);
                let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
                let denom = v.clone().sqrt().div_scalar(bc2_sqrt).add_scalar(eps);
                let w = w - (m.clone() / denom).mul_scalar(lr / bc1);
                self.moments.insert(name.to_string(), (m, v));
                w
            }
        }
    }
}

/// Flattened gradients (on the inner, non-autodiff device) by parameter name.
pub type GradMap = BTreeMap<String, Tensor<1>>;

struct Apply<'a> {
    path: Vec<String>,
    grads: &'a GradMap,
    grad_scale: f64,
    lr: f64,
    opt: &'a mut Optimizer,
}

impl ModuleMapper for Apply<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(segment(name).to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let name = self.path.join(".");
        let Some(grad) = self.grads.get(&name) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let shape = tensor.dims();
        let strategy = tensor.gradient_checkpointing_strategy();
        let w = tensor.inner().reshape([-1]);
        let g = grad.clone().mul_scalar(self.grad_scale);
        let updated = self.opt.update(&name, w, g, self.lr, &shape).reshape(shape);
        Param::from_mapped_value(id, to_autodiff(updated, strategy).require_grad(), mapper)
    }
}

/// `t` (plain device) back on the autodiff device, with the gradient checkpointing strategy
/// of the graph it joins: tensors of one op must share it (Burn panics otherwise).
pub fn to_autodiff<const D: usize>(t: Tensor<D>, strategy: Option<GradientCheckpointingStrategy>) -> Tensor<D> {
    let lifted = Tensor::from_inner(t);
    match strategy {
        Some(strategy) => lifted.with_gradient_checkpointing_strategy(strategy),
        None => lifted,
    }
}
