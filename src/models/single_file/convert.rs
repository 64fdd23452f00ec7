//! Single file ↔ diffusers folder, both streamed one tensor at a time.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, TensorData};

use super::{COMPONENTS, mapping};
use crate::models::clip::ClipTextModel;
use crate::models::folder::component_dir;
use crate::models::io::{PendingTensor, Remapped, SafeTensorFiles, transpose, write_safetensors};
use crate::models::unet::UNet2DConditionModel;
use crate::models::vae::AutoencoderKL;
use crate::models::weights::Weights;

/// The weights file of a diffusers component folder.
fn weights_file(component: &str) -> &'static str {
    if component.starts_with("text_encoder") { "model.safetensors" } else { "diffusion_pytorch_model.safetensors" }
}

fn stored(dtype: safetensors::Dtype) -> DType {
    match dtype {
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        _ => DType::F32,
    }
}

/// Checks `files` against the component's model, built from `config` without weights:
/// every tensor present with its shape, none left over.
pub(super) fn precheck(component: &str, config: &serde_json::Value, files: &SafeTensorFiles) -> Result<()> {
    let c = config.clone();
    match component {
        "unet" => Weights::precheck(files, None, |w| UNet2DConditionModel::load(&serde_json::from_value(c)?, w)),
        "vae" => Weights::precheck(files, None, |w| AutoencoderKL::load(&serde_json::from_value(c)?, w)),
        _ => Weights::precheck(files, None, |w| {
            ClipTextModel::load(&serde_json::from_value(c)?, w, component == "text_encoder_2")
        }),
    }
}

/// Refuses a checkpoint of another architecture, naming it: SD1.x/SD2.x attend from the
/// first block (768/1024-wide), SDXL's first block has no attention and its UNet has
/// `label_emb` (the size and crop conditioning).
pub(super) fn not_sdxl(file: &Path, source: &SafeTensorFiles) -> Result<()> {
    let unet = "model.diffusion_model.";
    let attn = format!("{unet}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight");
    let width = source.shape(&attn).and_then(|s| s.get(1).copied());
    let kind = match width {
        Some(768) => "an SD1.x checkpoint",
        Some(1024) => "an SD2.x checkpoint",
        Some(_) => "not an SDXL checkpoint",
        None if source.names().any(|n| n.starts_with(unet))
            && !source.names().any(|n| n.starts_with(&format!("{unet}label_emb."))) =>
        {
            bail!(
                "{}: not an SDXL checkpoint: its UNet has no label_emb (SDXL's size and crop conditioning)",
                file.display()
            )
        }
        None => return Ok(()),
    };
    bail!("{}: this is {kind}: input_blocks.1.1 has {}-wide cross-attention", file.display(), width.unwrap_or(0))
}

/// Writes the SDXL single `file` as a diffusers folder `out`: configs, tokenizers and
/// scheduler from `config_dir` (a diffusers folder of the same architecture), each
/// component's tensors from the file (checked against its config first), a component the
/// file lacks (a UNet-only file) copied from `config_dir`. Returns what came from where.
pub fn to_diffusers(file: &Path, config_dir: &Path, out: &Path, dtype: Option<DType>) -> Result<Vec<String>> {
    let source = SafeTensorFiles::open_file(file)?;
    if let Some(prefix) = super::flux::prefix(source.names()) {
        return super::flux::to_diffusers(file, &prefix, config_dir, out, dtype);
    }
    if let Some(prefix) = super::sd3::prefix(source.names()) {
        return super::sd3::to_diffusers(file, &prefix, config_dir, out, dtype);
    }
    if super::vae::is_bare_vae(source.names()) {
        return super::vae::to_diffusers(file, config_dir, out, dtype);
    }
    not_sdxl(file, &source)?;
    let mut report = Vec::new();
    if source.names().any(|n| n.starts_with("model_ema.")) {
        report.push("the file also holds EMA weights (model_ema.*); the UNet is model.diffusion_model.*".into());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (component, prefix) in COMPONENTS {
        let config_sub = component_dir(config_dir, component)?;
        let target = out.join(component);
        if !source.names().any(|n| n.starts_with(prefix)) {
            copy_dir(&config_sub, &target)?;
            report.push(format!("{component}: not in the file (no {prefix}*), copied from {}", config_sub.display()));
            continue;
        }
        let (config, _) = crate::models::config::read_config::<serde_json::Value>(&config_sub)?;
        let map = mapping(component, &config)?;
        let view = SafeTensorFiles::remap(SafeTensorFiles::open_file(file)?, &map).with_context(|| {
            format!("{}: the {component} ({prefix}*) does not fit {}", file.display(), config_sub.display())
        })?;
        precheck(component, &config, &view)
            .with_context(|| format!("{}: the {component} does not fit {}", file.display(), config_sub.display()))?;
        std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        write_view(&view, &target.join(weights_file(component)), dtype)?;
        std::fs::copy(config_sub.join("config.json"), target.join("config.json"))
            .with_context(|| format!("copying {}", config_sub.join("config.json").display()))?;
        report.push(format!("{component}: {} tensors from {prefix}*", map.len()));
    }
    for extra in ["tokenizer", "tokenizer_2", "scheduler"] {
        copy_dir(&config_dir.join(extra), &out.join(extra))?;
    }
    std::fs::copy(config_dir.join("model_index.json"), out.join("model_index.json"))
        .with_context(|| format!("copying {}/model_index.json", config_dir.display()))?;
    Ok(report)
}

/// Every tensor of a (remapped) view written to `path`, one at a time, in `dtype` (None: as
/// stored); each tensor's mapped pages leave the process's resident memory once read.
pub(super) fn write_view(view: &SafeTensorFiles, path: &Path, dtype: Option<DType>) -> Result<()> {
    let tensors = view
        .names()
        .map(|name| {
            let v = view.get(name).expect("listed");
            let (shape, dtype) = (v.shape.clone(), dtype.unwrap_or(stored(v.dtype)));
            let name = name.to_string();
            PendingTensor {
                name: name.clone(),
                shape,
                dtype,
                data: Box::new(move || {
                    let data = view.get(&name).expect("listed").to_data().expect("a float tensor");
                    view.release(&name);
                    data
                }),
            }
        })
        .collect();
    write_safetensors(path, tensors)
}

pub(super) fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest).with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// One tensor of the single file from its diffusers parts: row pieces stacked, a transposed
/// view transposed back, the VAE attention's matrices as 1×1 convolutions.
fn assemble(files: &SafeTensorFiles, parts: &[(String, Remapped)]) -> Result<TensorData> {
    let mut values: Vec<f32> = Vec::new();
    for (name, r) in parts {
        let view = files.get(name).with_context(|| format!("{}: no tensor {name}", files.describe()))?;
        let data = view.to_data()?.convert::<f32>();
        files.release(name);
        let v = data.try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
        let mut v = transpose(v, r.transpose.then(|| (view.shape[0], view.shape[1])));
        if r.swap_halves {
            // Its own inverse: the file's order back.
            let half = v.len() / 2;
            v.rotate_left(half);
        }
        values.extend(v);
    }
    Ok(TensorData::new(values, single_shape(files, parts)?))
}

/// Writes the diffusers folder `model` as one SDXL single file `out` (stored in `dtype`).
pub fn to_single_file(model: &Path, out: &Path, dtype: DType) -> Result<Vec<String>> {
    to_single_file_with(model, None, out, dtype)
}

/// [`to_single_file`] with the UNet from `unet` (a fine-tuned `unet/` folder) instead of the
/// model's own.
pub fn to_single_file_with(model: &Path, unet: Option<&Path>, out: &Path, dtype: DType) -> Result<Vec<String>> {
    if super::flux::is_flux_folder(model) {
        return super::flux::to_single_file(model, unet, out, dtype);
    }
    if super::sd3::is_sd3_folder(model) {
        return super::sd3::to_single_file(model, unet, out, dtype);
    }
    let mut opened = Vec::new();
    for (component, prefix) in COMPONENTS {
        let dir = match unet {
            Some(u) if component == "unet" => u.to_path_buf(),
            _ => component_dir(model, component)?,
        };
        let (config, _) = crate::models::config::read_config::<serde_json::Value>(&dir)?;
        let stem = if component.starts_with("text_encoder") { "model" } else { "diffusion_pytorch_model" };
        let files = with_text_model_prefix(SafeTensorFiles::open_component(&dir, &[stem])?)?;
        opened.push((component, prefix, files, by_target(mapping(component, &config)?)));
    }
    write_single(&opened, out, dtype)
}

/// A mapping grouped by the single file's tensor, each tensor's pieces in row order.
pub(super) type ByTarget = BTreeMap<String, Vec<(String, Remapped)>>;

pub(super) fn by_target(mapping: BTreeMap<String, Remapped>) -> ByTarget {
    let mut out: ByTarget = BTreeMap::new();
    for (name, r) in mapping {
        out.entry(r.from.clone()).or_default().push((name, r));
    }
    for parts in out.values_mut() {
        parts.sort_by_key(|(_, r)| r.rows.map_or(0, |[start, _]| start));
    }
    out
}

/// Writes the single file of `opened` components (label, file prefix, the component's
/// diffusers weights, its grouped mapping), streamed one tensor at a time.
pub(super) fn write_single(
    opened: &[(&str, &str, SafeTensorFiles, ByTarget)],
    out: &Path,
    dtype: DType,
) -> Result<Vec<String>> {
    let mut tensors = Vec::new();
    let mut report = Vec::new();
    for (component, prefix, files, by_target) in opened {
        report.push(format!("{component}: {} tensors under {prefix}*", by_target.len()));
        for (target, parts) in by_target {
            let shape = single_shape(files, parts)?;
            tensors.push(PendingTensor {
                name: target.clone(),
                shape,
                dtype,
                data: Box::new(move || assemble(files, parts).expect("checked when listed")),
            });
        }
    }
    write_safetensors(out, tensors)?;
    Ok(report)
}

/// transformers 5 may save a CLIP text model without the `text_model.` prefix; the
/// mapping names tensors with it.
pub(super) fn with_text_model_prefix(files: SafeTensorFiles) -> Result<SafeTensorFiles> {
    if !files.names().any(|n| n.starts_with("embeddings.")) {
        return Ok(files);
    }
    let map = files
        .names()
        .map(|n| {
            let name = if n.starts_with("text_projection") { n.to_string() } else { format!("text_model.{n}") };
            (name, Remapped::plain(n.to_string()))
        })
        .collect();
    SafeTensorFiles::remap(files, &map)
}

/// The single file's shape of a tensor made of `parts` (checked: every part exists).
fn single_shape(files: &SafeTensorFiles, parts: &[(String, Remapped)]) -> Result<Vec<usize>> {
    let mut shape: Vec<usize> = Vec::new();
    for (name, r) in parts {
        let mut s = files.shape(name).with_context(|| format!("{}: no tensor {name}", files.describe()))?.to_vec();
        if r.transpose {
            s.reverse();
        }
        if r.shape.is_some() {
            // The only reshape of the layout: ldm's attention projections are [C, C, 1, 1].
            s.extend([1, 1]);
        }
        match shape.first_mut() {
            Some(rows) => *rows += s[0],
            None => shape = s,
        }
    }
    Ok(shape)
}
