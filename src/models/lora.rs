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
