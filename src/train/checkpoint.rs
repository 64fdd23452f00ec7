//! Checkpoints: everything needed to resume (UNet weights as a diffusers folder, optimizer
//! moments, step counts). Written to a temporary folder and renamed into place, so an
//! interrupted write never replaces or corrupts the previous checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::models::folder::save_component;
use crate::models::io::{PendingTensor, SafeTensorFiles, write_atomic, write_safetensors};
use crate::models::named::for_each_param;
use crate::train::optim::Optimizer;

#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Optimizer steps completed.
    pub step: usize,
    /// The optimizer's own step count (bias correction).
    pub optimizer_step: u64,
    /// Non-finite losses in a row when the checkpoint was written.
    pub bad_in_a_row: usize,
    /// The data order and the noise/timesteps of micro-batch i are drawn from generators
    /// seeded by (seed, i): this pair is the whole RNG state and data position.
    pub seed: u64,
    pub micro_batches_done: usize,
    /// Pairs consumed so far (all ranks): the data stream resumes here. Absent in
    /// checkpoints of older versions (one rank: micro-batches × batch size).
    #[serde(default)]
    pub data_cursor: Option<usize>,
    /// Where that is in the data (epoch, shard, row), for people.
    #[serde(default)]
    pub data_position: Option<crate::data::stream::Position>,
    /// Data-parallel ranks of the run that wrote it.
    #[serde(default = "one")]
    pub ranks: usize,
}

fn one() -> usize {
    1
}

const PREFIX: &str = "checkpoint-";
/// The adapters of a LoRA run's checkpoint (full runs have a `unet/` folder instead).
pub const ADAPTERS: &str = "adapters.safetensors";

/// `checkpoint-<step>`, as accelerate names them (runs of older mapo versions have the
/// step zero-padded to 8 digits; both are read).
pub fn path_for(output_dir: &Path, step: usize) -> PathBuf {
    output_dir.join(format!("{PREFIX}{step}"))
}

/// The step in a checkpoint folder's name.
fn step_of(path: &Path) -> Option<usize> {
    path.file_name()?.to_str()?.strip_prefix(PREFIX)?.parse().ok()
}

#[allow(clippy::too_many_arguments)]
pub fn save<M: burn::module::Module>(
    output_dir: &Path,
    state: &CheckpointState,
    unet: &M,
    extras: &[(&str, &M)],
    unet_config: &serde_json::Value,
    optimizer: &Optimizer,
    keep: usize,
    lora: bool,
) -> Result<PathBuf> {
    let final_dir = path_for(output_dir, state.step);
    let tmp = output_dir.join(format!(".tmp-{PREFIX}{}", state.step));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    if lora {
        // Base weights are frozen and come from the model folder: store the adapters only.
        write_safetensors(&tmp.join(ADAPTERS), trained_params(unet, true))?;
    } else {
        save_component(unet, unet_config, &tmp.join("unet"), DType::F32)?;
    }
    for (name, module) in extras {
        write_safetensors(&tmp.join(format!("{name}.safetensors")), trained_params(*module, lora))?;
    }
    let moments = optimizer
        .moments
        .iter()
        .flat_map(|(name, (m, v))| {
            [("m", m), ("v", v)].map(|(k, t)| {
                let t = t.clone();
                PendingTensor {
                    name: format!("{k}.{name}"),
                    shape: t.dims().to_vec(),
                    dtype: DType::F32,
                    data: Box::new(move || t.into_data()),
                }
            })
        })
        .collect();
    write_safetensors(&tmp.join("optimizer.safetensors"), moments)?;
    write_atomic(&tmp.join("state.json"), serde_json::to_string_pretty(state)?.as_bytes())?;
    if final_dir.exists() {
        remove_checkpoint(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).with_context(|| format!("renaming {} into place", tmp.display()))?;
    prune(output_dir, keep)?;
    Ok(final_dir)
}

/// A module's trained parameters (LoRA: the adapters; else all), to be written as they are.
fn trained_params(module: &impl burn::module::Module, lora: bool) -> Vec<PendingTensor<'_>> {
    let mut out = Vec::new();
    for_each_param(module, |name, t, shape| {
        if !lora || crate::models::lora::is_adapter(&name) {
            out.push(PendingTensor { name, shape, dtype: DType::F32, data: Box::new(move || t.into_data()) });
        }
    });
    out
}

/// A checkpoint's extra module `name` (an online run's old policy or refreshed reference):
/// `like` (the policy, plain) with the saved trained parameters in place.
pub fn load_extra<M: burn::module::Module>(dir: &Path, name: &str, like: M, device: &Device) -> Result<M> {
    let path = dir.join(format!("{name}.safetensors"));
    let files = SafeTensorFiles::open_file(&path)?;
    let mut values = std::collections::BTreeMap::new();
    let shapes: std::collections::BTreeMap<String, Vec<usize>> =
        crate::models::named::param_shapes(&like).into_iter().collect();
    for key in files.names() {
        let Some(shape) = shapes.get(key) else {
            bail!("{}: {key} is not a parameter of this model", path.display());
        };
        let view = files.get(key).expect("listed");
        anyhow::ensure!(
            view.shape == *shape,
            "{}: {key} has shape {:?}, the model's parameter {shape:?}",
            path.display(),
            view.shape
        );
        let flat: Vec<f32> =
            view.to_data()?.convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let n = flat.len();
        values.insert(key.to_string(), Tensor::<1>::from_data(TensorData::new(flat, [n]), (device, DType::F32)));
    }
    Ok(crate::models::named::set_params(like, &values))
}

/// Completed checkpoints, oldest first (a folder counts once its rename has happened).
pub fn list(output_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(output_dir) else { return Ok(found) };
    for e in entries {
        let path = e?.path();
        if step_of(&path).is_some() && path.join("state.json").is_file() {
            found.push(path);
        }
    }
    // By step, not by name: `checkpoint-10` comes after `checkpoint-9`.
    found.sort_by_key(|p| step_of(p));
    Ok(found)
}

fn prune(output_dir: &Path, keep: usize) -> Result<()> {
    let all = list(output_dir)?;
    for old in &all[..all.len().saturating_sub(keep)] {
        remove_checkpoint(old)?;
    }
    Ok(())
}

/// Renames the folder out of the checkpoint namespace before deleting it, so a kill in the
/// middle never leaves a half-deleted folder that still looks like a checkpoint (the next
/// start removes the `.del-` leftover).
fn remove_checkpoint(dir: &Path) -> Result<()> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let doomed = dir.with_file_name(format!(".del-{name}"));
    let _ = std::fs::remove_dir_all(&doomed);
    std::fs::rename(dir, &doomed).with_context(|| format!("removing old checkpoint {}", dir.display()))?;
    std::fs::remove_dir_all(&doomed).with_context(|| format!("removing old checkpoint {}", doomed.display()))
}

/// `latest` or a checkpoint path → that checkpoint folder.
pub fn resolve(output_dir: &Path, which: &str) -> Result<PathBuf> {
    if which == "latest" {
        return list(output_dir)?
            .pop()
            .with_context(|| format!("--resume latest: no checkpoint in {}", output_dir.display()));
    }
    let p = PathBuf::from(which);
    if !p.join("state.json").is_file() {
        bail!("--resume {which}: not a checkpoint folder (no state.json)");
    }
    Ok(p)
}

/// Restores the state and the optimizer moments (onto `device`); returns the checkpoint's
/// weights: a `unet/` folder, or for LoRA runs the adapters file.
pub fn load(dir: &Path, optimizer: &mut Optimizer, device: &Device) -> Result<(CheckpointState, PathBuf)> {
    let text = std::fs::read_to_string(dir.join("state.json"))
        .with_context(|| format!("reading {}/state.json", dir.display()))?;
    let state: CheckpointState =
        serde_json::from_str(&text).with_context(|| format!("{}/state.json", dir.display()))?;
    let files = SafeTensorFiles::open_file(&dir.join("optimizer.safetensors"))?;
    optimizer.moments.clear();
    for name in files.names().filter_map(|n| n.strip_prefix("m.")) {
        let m: Tensor<1> = files.float(&format!("m.{name}"), device, DType::F32)?;
        let v: Tensor<1> = files.float(&format!("v.{name}"), device, DType::F32)?;
        optimizer.moments.insert(name.to_string(), (m, v));
    }
    optimizer.step = state.optimizer_step;
    let adapters = dir.join(ADAPTERS);
    Ok((state, if adapters.is_file() { adapters } else { dir.join("unet") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// accelerate's names (`checkpoint-10`) sort by step, and older zero-padded ones are read.
    #[test]
    fn checkpoints_are_ordered_by_step_whatever_the_padding() {
        let dir = std::env::temp_dir().join(format!("mapo-ckpt-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for name in ["checkpoint-9", "checkpoint-10", "checkpoint-00000002", "checkpoint-x"] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("state.json"), "{}").unwrap();
        }
        let names: Vec<String> =
            list(&dir).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["checkpoint-00000002", "checkpoint-9", "checkpoint-10"]);
        assert_eq!(resolve(&dir, "latest").unwrap(), dir.join("checkpoint-10"));
        assert_eq!(path_for(&dir, 500), dir.join("checkpoint-500"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
