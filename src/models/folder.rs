//! Diffusers component folders: finding a component in a pipeline folder, and writing
//! models back in that layout.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::DType;

use super::io::{PendingTensor, write_atomic, write_safetensors};
use super::named::for_each_param;

/// Writes `module` as `dir/config.json` + `dir/diffusion_pytorch_model.safetensors`, the
/// layout `from_pretrained` reads; tensors are stored in `dtype`.
pub fn save_component<M: Module>(module: &M, config: &serde_json::Value, dir: &Path, dtype: DType) -> Result<()> {
    save_as(module, config, &dir.join("diffusion_pytorch_model.safetensors"), dtype, |name| name)
}

/// Writes `module` to the weights file `file` with keys renamed by `key`, and its
/// `config.json` beside it (transformers' `model.safetensors` layout, for example).
pub fn save_as<M: Module>(
    module: &M,
    config: &serde_json::Value,
    file: &Path,
    dtype: DType,
    key: impl Fn(String) -> String,
) -> Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tensors = Vec::new();
    for_each_param(module, |name, tensor, shape| {
        tensors.push(PendingTensor { name: key(name), shape, dtype, data: Box::new(move || tensor.into_data()) });
    });
    write_safetensors(file, tensors)?;
    write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(config)?.as_bytes())
}

/// The configs single files are read with, when not the built-in SDXL base ones: set once
/// per process from the command's `--config DIR` (or a run's `model_config`).
static SINGLE_FILE_CONFIGS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Reads `--model FILE` with the configs, tokenizers and scheduler of `dir` (a diffusers
/// folder of the file's architecture) instead of the built-in SDXL base ones.
pub fn set_single_file_configs(dir: Option<&Path>) {
    if let Some(dir) = dir {
        let _ = SINGLE_FILE_CONFIGS.set(dir.to_path_buf());
    }
}

/// The diffusers folder of `model`: itself, or for an SDXL single file the folder that
/// reads it in place (`models::single_file::builtin`).
pub fn model_folder(model: &Path) -> Result<PathBuf> {
    if super::single_file::builtin::is_single_file(model) {
        super::single_file::builtin::folder_with(model, SINGLE_FILE_CONFIGS.get().map(PathBuf::as_path))
    } else {
        Ok(model.to_path_buf())
    }
}

/// `model/<name>` for a pipeline folder (or single file); `model` itself when it already is
/// that component.
pub fn component_dir(model: &Path, name: &str) -> Result<PathBuf> {
    let model = &model_folder(model)?;
    let sub = model.join(name);
    if sub.join("config.json").is_file() {
        return Ok(sub);
    }
    if model.join("config.json").is_file() && model.file_name().is_some_and(|f| f == name) {
        return Ok(model.to_path_buf());
    }
    bail!("{} has no {name}/config.json (expected a diffusers pipeline folder)", model.display())
}

/// The `_class_name` of a folder's `transformer/config.json` (or of its own `config.json`,
/// for a denoiser folder); None when there is none.
pub fn denoiser_class(model: &Path) -> Option<String> {
    let config = model.join("transformer").join("config.json");
    let config = if config.is_file() { config } else { model.join("config.json") };
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config).ok()?).ok()?;
    v["_class_name"].as_str().map(str::to_string)
}
