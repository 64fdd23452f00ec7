//! LoRA adapters on linear layers (the attention projections by default), exported as
//! LoRA files (`file`: the PEFT layout diffusers reads, kohya's that ComfyUI/A1111 read),
//! or merged into the weights.

use std::path::Path;

use anyhow::{Result, ensure};
use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};

pub mod file;
pub mod flux_kohya;
pub mod sgm;

use anyhow::Context;
pub use file::{LoraFile, LoraFormat};
pub use sgm::BlockLayout;

use super::io::{PendingTensor, SafeTensorFiles, write_safetensors};
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

/// Every attention projection: the UNet's `to_q/to_k/to_v/to_out.0`; SD3's joint attention
/// also projects the text (`add_*_proj`, `to_add_out`), as diffusers' SD3 LoRA scripts target.
/// Names a model lacks match nothing.
fn default_targets() -> Vec<String> {
    ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
        .map(String::from)
        .to_vec()
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

/// The names `mapo train` gives a LoRA run's adapters (diffusers' default name; kohya's).
pub const LORA_FILE_PEFT: &str = "pytorch_lora_weights.safetensors";
pub const LORA_FILE_KOHYA: &str = "pytorch_lora_weights_kohya.safetensors";

/// Whether a parameter (by its `for_each_param` name) is a LoRA adapter's A or B matrix.
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora.lora_")
}

/// Writes `module` as a plain diffusers component folder with every adapter folded into
/// its base weight: `W + scale · B·A`.
pub fn save_merged<M: Module>(module: &M, config: &serde_json::Value, dir: &Path, scale: f64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let found = LoraFile::from_module(module, scale).adapters;
    let mut tensors = Vec::new();
    for_each_param(module, |name, t, shape| {
        if is_adapter(&name) {
            return;
        }
        let delta = name.strip_suffix(".weight").and_then(|layer| found.get(layer)).map(|a| a.delta().reshape([-1]));
        let merged = match delta {
            Some(d) => t.clone() + d.cast(t.dtype()),
            None => t,
        };
        tensors.push(PendingTensor { name, shape, dtype: DType::F32, data: Box::new(move || merged.into_data()) });
    });
    write_safetensors(&dir.join("diffusion_pytorch_model.safetensors"), tensors)?;
    super::io::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(config)?.as_bytes())
}

/// [`save_merged`] for a module whose frozen base is held in a lower precision than the
/// model folder's (LoRA training in bf16): each merged weight is the folder's own tensor
/// (`base`, mapped; read one at a time, in f32) plus the adapter's update, so the export
/// keeps the folder's precision without a second copy of the model in memory.
pub fn save_merged_from<M: Module>(
    module: &M,
    base: &SafeTensorFiles,
    config: &serde_json::Value,
    dir: &Path,
    scale: f64,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let found = LoraFile::from_module(module, scale).adapters;
    let mut names = Vec::new();
    for_each_param(module, |name, _, shape| {
        if !is_adapter(&name) {
            names.push((name, shape));
        }
    });
    for (name, shape) in &names {
        let view = base.get(name).with_context(|| format!("{}: no tensor {name} to merge into", base.describe()))?;
        ensure!(view.shape == *shape, "{}: {name} has shape {:?}, the model {shape:?}", base.describe(), view.shape);
        view.to_data()?;
    }
    let device = burn::tensor::Device::default();
    let tensors = names
        .into_iter()
        .map(|(name, shape)| {
            let delta = name.strip_suffix(".weight").and_then(|layer| found.get(layer)).map(|a| a.delta());
            let device = device.clone();
            let key = name.clone();
            let data = move || {
                let stored = base.get(&key).and_then(|v| v.to_data().ok()).expect("checked before writing");
                base.release(&key);
                let values: Vec<f32> = stored.convert::<f32>().try_into_vec::<f32>().expect("f32 after the conversion");
                let n = values.len();
                let w = Tensor::<1>::from_data(burn::tensor::TensorData::new(values, [n]), (&device, DType::F32));
                let merged = match delta {
                    Some(d) => w + d.reshape([-1]).to_device(&device).cast(DType::F32),
                    None => w,
                };
                merged.into_data()
            };
            PendingTensor { name, shape, dtype: DType::F32, data: Box::new(data) }
        })
        .collect();
    write_safetensors(&dir.join("diffusion_pytorch_model.safetensors"), tensors)?;
    super::io::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(config)?.as_bytes())
}

/// Folds the adapters of a LoRA file (peft or kohya, detected) into the weights of
/// `module`: `W += (alpha / rank) · B·A`. Every adapter in the file must find its layer.
pub fn apply_lora_file<M: Module>(module: M, path: &Path, layout: &BlockLayout) -> Result<M> {
    let device = burn::tensor::Device::default();
    let lora = LoraFile::read(path, layout, &device)?;
    anyhow::ensure!(
        lora.component == "unet",
        "{}: a LoRA of a transformer (SD3/FLUX keys transformer.*); this model's denoiser is a UNet",
        path.display()
    );
    lora.apply(module).with_context(|| format!("{}", path.display()))
}

/// A transformer's LoRA file (SD3, FLUX: PEFT keys `transformer.<layer>.lora_A.weight`;
/// FLUX: the kohya / BFL layout too) folded into `module`; a UNet's file is refused by name.
pub fn apply_transformer_lora_file<M: Module>(module: M, path: &Path) -> Result<M> {
    let device = burn::tensor::Device::default();
    let lora = LoraFile::read(path, &BlockLayout::uniform(0, 0), &device)?;
    anyhow::ensure!(
        lora.component == "transformer",
        "{}: a {} LoRA of a UNet; this model's denoiser is a transformer (PEFT keys transformer.<layer>.lora_A.weight, \
         or FLUX's kohya lora_unet_double_blocks_...)",
        path.display(),
        lora.format.name()
    );
    lora.apply(module).with_context(|| format!("{}", path.display()))
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
