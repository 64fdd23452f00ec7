//! SD3 / SD3.5 single files in Stability's MMDiT layout (`sd3.5_medium.safetensors`): the
//! transformer under `model.diffusion_model.` (`joint_blocks.N.x_block` / `context_block`,
//! q/k/v fused, `adaLN_modulation.1`, `mlp.fc1/fc2`; the last block's text modulation and the
//! final layer with shift before scale), and, when the file carries them, the VAE under
//! `first_stage_model.` (ldm names, as SDXL's) and the text encoders under
//! `text_encoders.{clip_l,clip_g,t5xxl}.transformer.` (transformers' own names). Configs,
//! tokenizers, the scheduler and any component the file lacks come from `--config DIR`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::names_of;
use crate::models::io::Remapped;
use crate::models::sd3::{SD3Transformer2DModel, SD3TransformerConfig};

/// The transformer's prefix in SD3 files.
pub const PREFIX: &str = "model.diffusion_model.";
/// The key that marks an SD3 file (under a prefix or none).
const MARK: &str = "joint_blocks.0.x_block.attn.qkv.weight";

/// The folders of an SD3 pipeline and their prefixes in the file (text encoders in
/// transformers' names under theirs).
pub const TEXT_ENCODERS: [(&str, &str); 3] = [
    ("text_encoder", "text_encoders.clip_l.transformer."),
    ("text_encoder_2", "text_encoders.clip_g.transformer."),
    ("text_encoder_3", "text_encoders.t5xxl.transformer."),
];

/// The transformer's prefix among `names` when the file is SD3's.
pub fn prefix<'a>(mut names: impl Iterator<Item = &'a str>) -> Option<String> {
    names.find_map(|n| n.strip_suffix(MARK)).map(str::to_string)
}

/// `diffusers name → where it is in the file` for a transformer of `config`, its keys under
/// `prefix` (the position table included: diffusers' reader needs it).
pub fn mapping(config: &SD3TransformerConfig, prefix: &str) -> Result<BTreeMap<String, Remapped>> {
    let d = config.inner_dim();
    let last = config.num_layers - 1;
    let mut out = BTreeMap::new();
    out.insert("pos_embed.pos_embed".to_string(), Remapped::plain(format!("{prefix}pos_embed")));
    for (name, _) in names_of(|w| SD3Transformer2DModel::load(config, w))? {
        if name == "pos_embed.pos_embed" {
            continue;
        }
        let (layer, param) = name.rsplit_once('.').with_context(|| format!("{name}: no parameter name"))?;
        let (from, part, swap) = locate(layer, last).with_context(|| format!("{name}: no MMDiT name for it"))?;
        let remapped = Remapped {
            rows: part.map(|k| [k * d, d]),
            swap_halves: swap,
            ..Remapped::plain(format!("{prefix}{from}.{param}"))
        };
        out.insert(name, remapped);
    }
    Ok(out)
}

/// Outside the blocks: (diffusers layer, MMDiT layer).
const OUTER: [(&str, &str); 7] = [
    ("pos_embed.proj", "x_embedder.proj"),
    ("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0"),
    ("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2"),
    ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
    ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
    ("context_embedder", "context_embedder"),
    ("proj_out", "final_layer.linear"),
];

/// Inside a joint block: (diffusers, MMDiT, part of a fused q/k/v).
const BLOCK: [(&str, &str, Option<usize>); 23] = [
    ("attn.to_q", "x_block.attn.qkv", Some(0)),
    ("attn.to_k", "x_block.attn.qkv", Some(1)),
    ("attn.to_v", "x_block.attn.qkv", Some(2)),
    ("attn.add_q_proj", "context_block.attn.qkv", Some(0)),
    ("attn.add_k_proj", "context_block.attn.qkv", Some(1)),
    ("attn.add_v_proj", "context_block.attn.qkv", Some(2)),
    ("attn.norm_q", "x_block.attn.ln_q", None),
    ("attn.norm_k", "x_block.attn.ln_k", None),
    ("attn.norm_added_q", "context_block.attn.ln_q", None),
    ("attn.norm_added_k", "context_block.attn.ln_k", None),
    ("attn.to_out.0", "x_block.attn.proj", None),
    ("attn.to_add_out", "context_block.attn.proj", None),
    ("attn2.to_q", "x_block.attn2.qkv", Some(0)),
    ("attn2.to_k", "x_block.attn2.qkv", Some(1)),
    ("attn2.to_v", "x_block.attn2.qkv", Some(2)),
    ("attn2.norm_q", "x_block.attn2.ln_q", None),
    ("attn2.norm_k", "x_block.attn2.ln_k", None),
    ("attn2.to_out.0", "x_block.attn2.proj", None),
    ("norm1.linear", "x_block.adaLN_modulation.1", None),
    ("norm1_context.linear", "context_block.adaLN_modulation.1", None),
    ("ff.net.0.proj", "x_block.mlp.fc1", None),
    ("ff.net.2", "x_block.mlp.fc2", None),
    ("ff_context.net.0.proj", "context_block.mlp.fc1", None),
];

/// The MMDiT layer of a diffusers layer, its fused part, and whether its halves swap (the
/// final layer's and the last block's AdaLN-Continuous modulation: shift before scale).
fn locate(layer: &str, last: usize) -> Option<(String, Option<usize>, bool)> {
    if layer == "norm_out.linear" {
        return Some(("final_layer.adaLN_modulation.1".into(), None, true));
    }
    if let Some((_, m)) = OUTER.iter().find(|(l, _)| *l == layer) {
        return Some((m.to_string(), None, false));
    }
    let (index, rest) = layer.strip_prefix("transformer_blocks.")?.split_once('.')?;
    let i: usize = index.parse().ok()?;
    if rest == "ff_context.net.2" {
        return Some((format!("joint_blocks.{i}.context_block.mlp.fc2"), None, false));
    }
    let (_, m, part) = BLOCK.iter().find(|(l, ..)| *l == rest)?;
    Some((format!("joint_blocks.{i}.{m}"), *part, rest == "norm1_context.linear" && i == last))
}

use std::path::Path;

use anyhow::bail;
use burn::tensor::DType;

use super::parts::{Part, prefixed};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::config::read_config;
use crate::models::folder::component_dir;
use crate::models::io::SafeTensorFiles;
use crate::models::t5::{T5Config, T5EncoderModel};
use crate::models::vae::{AutoencoderKL, VaeConfig};

/// The diffusers names of a text encoder folder's weights (CLIP in transformers' names).
fn text_encoder_names(dir: &Path) -> Result<(Vec<String>, TextEncoder)> {
    let (raw, _) = read_config::<serde_json::Value>(dir)?;
    if crate::models::t5::config::is_t5(&raw) {
        let c: T5Config = serde_json::from_value(raw)?;
        let names = names_of(|w| T5EncoderModel::load(&c, w))?.into_iter().map(|(n, _)| n).collect();
        return Ok((names, TextEncoder::T5(c)));
    }
    let c: ClipTextConfig = serde_json::from_value(raw)?;
    let projection = c.declares_projection().unwrap_or(true);
    Ok((super::clip_names(&c, projection)?, TextEncoder::Clip(c, projection)))
}

enum TextEncoder {
    Clip(ClipTextConfig, bool),
    T5(T5Config),
}

/// The components `file` holds, each checked against `configs`' config of it.
fn parts(file: &Path, prefix: &str, configs: &Path) -> Result<Vec<(Part, SafeTensorFiles)>> {
    let source = SafeTensorFiles::open_file(file)?;
    let has = |p: &str| source.names().any(|n| n.starts_with(p));
    let (config, _) = read_config::<SD3TransformerConfig>(&component_dir(configs, "transformer")?)?;
    let part = Part { component: "transformer", map: mapping(&config, prefix)? };
    let view = part.view(file, configs, |w| SD3Transformer2DModel::load(&config, w))?;
    let mut out = vec![(part, view)];
    if has("first_stage_model.") {
        let (c, _) = read_config::<VaeConfig>(&component_dir(configs, "vae")?)?;
        let part = Part { component: "vae", map: super::vae::mapping(&c)? };
        let view = part.view(file, configs, |w| AutoencoderKL::load(&c, w))?;
        out.push((part, view));
    }
    for (component, p) in TEXT_ENCODERS {
        if !has(p) {
            continue;
        }
        let (names, encoder) = text_encoder_names(&component_dir(configs, component)?)?;
        let mut map = prefixed(names, p);
        // SD3 files leave CLIP L's projection out; diffusers and ComfyUI take the identity.
        if let TextEncoder::Clip(c, true) = &encoder
            && source.get(&format!("{p}text_projection.weight")).is_none()
        {
            let identity = Remapped { identity: Some(c.hidden_size), ..Remapped::plain(String::new()) };
            map.insert("text_projection.weight".into(), identity);
        }
        let part = Part { component, map };
        let view = match &encoder {
            TextEncoder::Clip(c, projection) => part.view(file, configs, |w| ClipTextModel::load(c, w, *projection))?,
            TextEncoder::T5(c) => part.view(file, configs, |w| T5EncoderModel::load(c, w))?,
        };
        out.push((part, view));
    }
    Ok(out)
}

fn need_configs<'a>(file: &Path, configs: Option<&'a Path>) -> Result<&'a Path> {
    match configs {
        Some(c) => Ok(c),
        None => bail!(
            "{}: an SD3 / SD3.5 checkpoint (joint_blocks.*): give --config DIR, a diffusers folder of the same \
             model (its configs, tokenizers and scheduler are used, and any component the file lacks)",
            file.display()
        ),
    }
}

/// The diffusers view of an SD3 `file` in `dir` (see [`super::parts::build_view`]).
pub(super) fn build_folder(file: &Path, prefix: &str, configs: Option<&Path>, dir: &Path) -> Result<()> {
    let configs = need_configs(file, configs)?;
    let parts = parts(file, prefix, configs)?;
    let held: Vec<&str> = parts.iter().map(|(p, _)| p.component).collect();
    eprintln!(
        "{}: an SD3 checkpoint holding {}; the rest from {}; read through {}",
        file.display(),
        held.join(", "),
        configs.display(),
        dir.display()
    );
    super::parts::build_view(file, configs, dir, parts.into_iter().map(|(p, _)| p).collect())
}

/// An SD3 `file` as a diffusers folder `out`.
pub fn to_diffusers(
    file: &Path,
    prefix: &str,
    configs: &Path,
    out: &Path,
    dtype: Option<DType>,
) -> Result<Vec<String>> {
    super::parts::to_diffusers(configs, out, parts(file, prefix, configs)?, dtype)
}

/// A diffusers SD3 folder (`transformer` instead of its own when given) as one file in
/// Stability's layout: the transformer, the VAE and every text encoder the folder has.
pub fn to_single_file(model: &Path, transformer: Option<&Path>, out: &Path, dtype: DType) -> Result<Vec<String>> {
    use super::convert::{by_target, with_text_model_prefix, write_single};
    let dir = match transformer {
        Some(t) => t.to_path_buf(),
        None => component_dir(model, "transformer")?,
    };
    let (config, _) = read_config::<SD3TransformerConfig>(&dir)?;
    let mut opened = vec![(
        "transformer",
        PREFIX,
        SafeTensorFiles::open_component(&dir, &["diffusion_pytorch_model"])?,
        by_target(mapping(&config, PREFIX)?),
    )];
    let vae = component_dir(model, "vae")?;
    let (c, _) = read_config::<VaeConfig>(&vae)?;
    let files = SafeTensorFiles::open_component(&vae, &["diffusion_pytorch_model"])?;
    opened.push(("vae", "first_stage_model.", files, by_target(super::vae::mapping(&c)?)));
    for (component, prefix) in TEXT_ENCODERS {
        let Ok(dir) = component_dir(model, component) else { continue };
        let (names, _) = text_encoder_names(&dir)?;
        let files = with_text_model_prefix(SafeTensorFiles::open_component(&dir, &["model"])?)?;
        opened.push((component, prefix, files, by_target(prefixed(names, prefix))));
    }
    write_single(&opened, out, dtype)
}

/// Whether a diffusers folder (or its `transformer/`) holds an SD3 transformer.
pub fn is_sd3_folder(model: &Path) -> bool {
    crate::models::folder::denoiser_class(model).as_deref() == Some("SD3Transformer2DModel")
}
