//! LoRA adapters on linear layers (the attention projections by default), exported in
//! the PEFT layout that diffusers' `load_lora_weights` reads, or merged into the weights.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::io::{PendingTensor, write_safetensors};
use super::named::for_each_param;
use super::nn::like;
use super::weights::{Init, Weights};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    /// The update is scaled by alpha / rank.
    #[serde(default)]
    pub alpha: Option<f64>,
    /// Layer names (last key segments) that get adapters.
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

fn default_targets() -> Vec<String> {
    ["to_q", "to_k", "to_v", "to_out.0"].map(String::from).to_vec()
}

impl LoraConfig {
    pub fn new(rank: usize) -> Self {
        Self { rank, alpha: None, targets: default_targets() }
    }

    pub fn scale(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64) / self.rank as f64
    }

    /// Whether the layer at `prefix` (e.g. `...attn1.to_out.0`) is a target.
    pub fn targets(&self, prefix: &str) -> bool {
        self.targets.iter().any(|t| prefix == t || prefix.ends_with(&format!(".{t}")))
    }
}

/// `x ↦ scale · B(A(x))`, with A: [rank, in] and B: [out, rank] (PEFT's `lora_A`, `lora_B`).
#[derive(Module, Debug)]
pub struct Lora {
    pub lora_a: Param<Tensor<2>>,
    pub lora_b: Param<Tensor<2>>,
    scale: f64,
}

impl Lora {
    /// B starts at zero, so a fresh adapter leaves the model's output unchanged.
    pub fn load(w: &Weights, d_in: usize, d_out: usize, config: &LoraConfig) -> Self {
        let r = config.rank;
        Self {
            lora_a: w.optional_param("lora_a", [r, d_in], Init::FanIn(d_in)),
            lora_b: w.optional_param("lora_b", [d_out, r], Init::Zeros),
            scale: config.scale(),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let (a, b) = (like(&self.lora_a, dtype), like(&self.lora_b, dtype));
        burn::tensor::module::linear(burn::tensor::module::linear(x, a.transpose(), None), b.transpose(), None)
            .mul_scalar(self.scale)
    }

    /// `scale · B·A`, the adapter as a weight delta [out, in].
    pub fn delta(&self) -> Tensor<2> {
        self.lora_b.val().matmul(self.lora_a.val()).mul_scalar(self.scale)
    }
}

/// A flattened tensor and its shape.
type Flat = (Tensor<1>, Vec<usize>);

/// The adapters of `module` by layer name: `[lora_a, lora_b]`.
type Adapters = BTreeMap<String, [Flat; 2]>;

fn adapters<M: Module>(module: &M) -> Adapters {
    let mut parts: BTreeMap<String, [Option<Flat>; 2]> = BTreeMap::new();
    for_each_param(module, |name, t, shape| {
        if let Some(layer) = name.strip_suffix(".lora.lora_a") {
            parts.entry(layer.to_string()).or_default()[0] = Some((t, shape));
        } else if let Some(layer) = name.strip_suffix(".lora.lora_b") {
            parts.entry(layer.to_string()).or_default()[1] = Some((t, shape));
        }
    });
    parts.into_iter().map(|(k, [a, b])| (k, [a.expect("lora_a"), b.expect("lora_b")])).collect()
}

/// Writes the adapters of `module` as diffusers/PEFT LoRA weights:
/// `<prefix><layer>.lora_A.weight`, `<prefix><layer>.lora_B.weight`, with the scale
/// alpha/rank folded into `lora_B` (diffusers then applies them with scale 1).
pub fn save_lora<M: Module>(module: &M, path: &Path, prefix: &str, scale: f64) -> Result<usize> {
    let found = adapters(module);
    let mut tensors = Vec::new();
    for (layer, [(a, sa), (b, sb)]) in &found {
        let (a, b) = (a.clone(), b.clone());
        tensors.push(PendingTensor {
            name: format!("{prefix}{layer}.lora_A.weight"),
            shape: sa.clone(),
            dtype: DType::F32,
            data: Box::new(move || a.into_data()),
        });
        tensors.push(PendingTensor {
            name: format!("{prefix}{layer}.lora_B.weight"),
            shape: sb.clone(),
            dtype: DType::F32,
            data: Box::new(move || b.mul_scalar(scale).into_data()),
        });
    }
    write_safetensors(path, tensors)?;
    Ok(found.len())
}

/// Writes `module` as a plain diffusers component folder with every adapter folded into
/// its base weight: `W + scale · B·A`.
pub fn save_merged<M: Module>(module: &M, config: &serde_json::Value, dir: &Path, scale: f64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let found = adapters(module);
    let mut tensors = Vec::new();
    for_each_param(module, |name, t, shape| {
        if name.contains(".lora.lora_") {
            return;
        }
        let delta = name.strip_suffix(".weight").and_then(|layer| found.get(layer)).map(|[(a, sa), (b, sb)]| {
            let a = a.clone().reshape([sa[0], sa[1]]);
            let b = b.clone().reshape([sb[0], sb[1]]);
            b.matmul(a).mul_scalar(scale).reshape([-1])
        });
        let merged = match delta {
            Some(d) => t.clone() + d.cast(t.dtype()),
            None => t,
        };
        tensors.push(PendingTensor { name, shape, dtype: DType::F32, data: Box::new(move || merged.into_data()) });
    });
    write_safetensors(&dir.join("diffusion_pytorch_model.safetensors"), tensors)?;
    super::io::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(config)?.as_bytes())
}

/// Folds the adapters of a diffusers/PEFT LoRA file (`<prefix><layer>.lora_A.weight`,
/// `<prefix><layer>.lora_B.weight`, optional `<prefix><layer>.alpha`) into the weights of
/// `module`: `W += (alpha / rank) · B·A` (scale 1 without `alpha`, as diffusers' own files).
/// Every adapter in the file must find its layer.
pub fn apply_lora_file<M: Module>(module: M, path: &Path, prefix: &str) -> Result<M> {
    let files = super::io::SafeTensorFiles::open_file(path)?;
    let mut mapper = ApplyLora { path: Vec::new(), files: &files, prefix, applied: Vec::new(), error: None };
    let module = module.map(&mut mapper);
    if let Some(e) = mapper.error {
        return Err(e);
    }
    let wanted: Vec<String> = files
        .names()
        .filter_map(|n| n.strip_suffix(".lora_A.weight"))
        .filter_map(|n| n.strip_prefix(prefix))
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|l| !mapper.applied.contains(l)).collect();
    if wanted.is_empty() || !missing.is_empty() {
        anyhow::bail!(
            "{}: {} adapters with prefix {prefix:?}; no layer for: {:?}",
            path.display(),
            wanted.len(),
            missing.iter().take(10).collect::<Vec<_>>()
        );
    }
    Ok(module)
}

struct ApplyLora<'a> {
    path: Vec<String>,
    files: &'a super::io::SafeTensorFiles,
    prefix: &'a str,
    applied: Vec<String>,
    error: Option<anyhow::Error>,
}

impl burn::module::ModuleMapper for ApplyLora<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(super::named::segment(name).to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let Some(layer) = name.strip_suffix(".weight") else { return param };
        let key = |part: &str| format!("{}{layer}.{part}", self.prefix);
        if D != 2 || self.files.get(&key("lora_A.weight")).is_none() {
            return param;
        }
        let (id, w, mapper) = param.consume();
        let device = w.device();
        let read = |k: &str| self.files.float::<2>(&key(k), &device, DType::F32);
        let result = (|| -> Result<Tensor<D>> {
            let (a, b) = (read("lora_A.weight")?, read("lora_B.weight")?);
            let rank = a.dims()[0];
            let scale = match self.files.get(&key("alpha")) {
                Some(v) => {
                    v.to_data()?.convert::<f32>().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?[0] as f64
                        / rank as f64
                }
                None => 1.0,
            };
            let delta = b.matmul(a).mul_scalar(scale);
            if delta.dims().as_slice() != w.dims().as_slice() {
                anyhow::bail!("adapter for {layer}: B·A is {:?}, the weight is {:?}", delta.dims(), w.dims());
            }
            Ok(w.clone() + delta.cast(w.dtype()).reshape(w.dims()))
        })();
        match result {
            Ok(merged) => {
                self.applied.push(layer.to_string());
                Param::from_mapped_value(id, merged, mapper)
            }
            Err(e) => {
                self.error.get_or_insert(e);
                Param::from_mapped_value(id, w, mapper)
            }
        }
    }
}

/// The same module with every adapter's `lora_B` set to zero, i.e. the base model: a
/// LoRA run's frozen reference (DPO) without a second copy of the base weights.
pub fn disable_adapters<M: Module>(module: M) -> M {
    module.map(&mut ZeroB { path: Vec::new() })
}

struct ZeroB {
    path: Vec<String>,
}

impl burn::module::ModuleMapper for ZeroB {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.path.last().is_some_and(|n| n == "lora_b") {
            let (id, t, mapper) = param.consume();
            return Param::from_mapped_value(id, t.zeros_like(), mapper);
        }
        param
    }
}
