//! FLUX.1's single files: the transformer in Black Forest Labs' own layout, as
//! `flux1-dev.safetensors` ships and ComfyUI/Civitai share it (`double_blocks.N.img_attn.qkv`
//! with q, k and v fused, `single_blocks.N.linear1` fusing q, k, v and the MLP's input,
//! `final_layer.adaLN_modulation.1` with shift before scale; bare keys, or under
//! ComfyUI's `model.diffusion_model.`). The text encoders, VAE, tokenizers and scheduler
//! come from `--config DIR`, a diffusers FLUX folder. Names follow the same table as the
//! kohya / BFL LoRA layout (`lora::flux_kohya`), extended to every tensor.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::DType;

use super::names_of;
use super::parts::Part;
use crate::models::flux::{FluxTransformer2DModel, FluxTransformerConfig};
use crate::models::io::{Remapped, SafeTensorFiles};

/// The key that marks a BFL FLUX transformer (under a prefix or none).
const MARK: &str = "double_blocks.0.img_attn.qkv.weight";

/// The prefix of a BFL FLUX transformer among `names` (`""` or `model.diffusion_model.`),
/// or None when the file is not one.
pub fn prefix<'a>(mut names: impl Iterator<Item = &'a str>) -> Option<String> {
    names.find_map(|n| n.strip_suffix(MARK)).map(str::to_string)
}

/// Whether the file's transformer embeds guidance ([dev]) rather than not ([schnell]).
pub fn has_guidance<'a>(mut names: impl Iterator<Item = &'a str>, prefix: &str) -> bool {
    names.any(|n| n == format!("{prefix}guidance_in.in_layer.weight"))
}

/// Outside the blocks: (diffusers layer, BFL layer).
const OUTER: [(&str, &str); 10] = [
    ("x_embedder", "img_in"),
    ("context_embedder", "txt_in"),
    ("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"),
    ("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer"),
    ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"),
    ("time_text_embed.text_embedder.linear_2", "vector_in.out_layer"),
    ("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
    ("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
    ("norm_out.linear", "final_layer.adaLN_modulation.1"),
    ("proj_out", "final_layer.linear"),
];

/// Inside a double-stream block: (diffusers, BFL, part of a fused q/k/v: 0, 1, 2).
const DOUBLE: [(&str, &str, Option<usize>); 18] = [
    ("norm1.linear", "img_mod.lin", None),
    ("norm1_context.linear", "txt_mod.lin", None),
    ("attn.to_q", "img_attn.qkv", Some(0)),
    ("attn.to_k", "img_attn.qkv", Some(1)),
    ("attn.to_v", "img_attn.qkv", Some(2)),
    ("attn.add_q_proj", "txt_attn.qkv", Some(0)),
    ("attn.add_k_proj", "txt_attn.qkv", Some(1)),
    ("attn.add_v_proj", "txt_attn.qkv", Some(2)),
    ("attn.norm_q", "img_attn.norm.query_norm", None),
    ("attn.norm_k", "img_attn.norm.key_norm", None),
    ("attn.norm_added_q", "txt_attn.norm.query_norm", None),
    ("attn.norm_added_k", "txt_attn.norm.key_norm", None),
    ("attn.to_out.0", "img_attn.proj", None),
    ("attn.to_add_out", "txt_attn.proj", None),
    ("ff.net.0.proj", "img_mlp.0", None),
    ("ff.net.2", "img_mlp.2", None),
    ("ff_context.net.0.proj", "txt_mlp.0", None),
    ("ff_context.net.2", "txt_mlp.2", None),
];

/// Inside a single-stream block: (diffusers, BFL, part of linear1: q, k, v, MLP = 0..3).
const SINGLE: [(&str, &str, Option<usize>); 8] = [
    ("norm.linear", "modulation.lin", None),
    ("attn.to_q", "linear1", Some(0)),
    ("attn.to_k", "linear1", Some(1)),
    ("attn.to_v", "linear1", Some(2)),
    ("proj_mlp", "linear1", Some(3)),
    ("attn.norm_q", "norm.query_norm", None),
    ("attn.norm_k", "norm.key_norm", None),
    ("proj_out", "linear2", None),
];

/// BFL's name for one parameter (`weight`, `bias`; RMS norms' `weight` is `scale`).
fn param_name(bfl_layer: &str, param: &str) -> String {
    let param = if bfl_layer.ends_with("_norm") && param == "weight" { "scale" } else { param };
    format!("{bfl_layer}.{param}")
}

/// `diffusers name → where it is in the BFL file` for a transformer of `config`, the file's
/// keys under `prefix`.
pub fn mapping(config: &FluxTransformerConfig, prefix: &str) -> Result<BTreeMap<String, Remapped>> {
    let d = config.inner_dim();
    // Rows of each fused part: q, k, v of the width, then (linear1) the MLP's 4 × width.
    let rows = |part: usize| if part < 3 { [part * d, d] } else { [3 * d, 4 * d] };
    let mut out = BTreeMap::new();
    for (name, _) in names_of(|w| FluxTransformer2DModel::load(config, w))? {
        let (layer, param) = name.rsplit_once('.').with_context(|| format!("{name}: no parameter name"))?;
        let (from, part, swap) = locate(layer).with_context(|| format!("{name}: no BFL name for it"))?;
        let remapped = Remapped {
            rows: part.map(rows),
            swap_halves: swap,
            ..Remapped::plain(format!("{prefix}{}", param_name(&from, param)))
        };
        out.insert(name, remapped);
    }
    Ok(out)
}

/// The BFL layer of a diffusers layer, its fused part, and whether its halves swap.
pub fn locate(layer: &str) -> Option<(String, Option<usize>, bool)> {
    if let Some((_, bfl)) = OUTER.iter().find(|(l, _)| *l == layer) {
        return Some((bfl.to_string(), None, layer == "norm_out.linear"));
    }
    let block = |prefix: &str, bfl: &str, table: &[(&str, &str, Option<usize>)]| {
        let (index, rest) = layer.strip_prefix(prefix)?.split_once('.')?;
        let (_, b, part) = table.iter().find(|(l, ..)| *l == rest)?;
        Some((format!("{bfl}.{index}.{b}"), *part, false))
    };
    block("transformer_blocks.", "double_blocks", &DOUBLE)
        .or_else(|| block("single_transformer_blocks.", "single_blocks", &SINGLE))
}

/// The file's transformer as a checked part, its config from `configs`.
fn part(file: &Path, prefix: &str, configs: &Path) -> Result<(Part, SafeTensorFiles, FluxTransformerConfig)> {
    let config = transformer_config(file, prefix, configs)?;
    let part = Part { component: "transformer", map: mapping(&config, prefix)? };
    let view = part.view(file, configs, |w| FluxTransformer2DModel::load(&config, w))?;
    Ok((part, view, config))
}

/// The diffusers view of a BFL FLUX file in `dir`: its transformer a remap of the file,
/// everything else `configs`' (see [`super::parts::build_view`]).
pub(super) fn build_folder(file: &Path, prefix: &str, configs: Option<&Path>, dir: &Path) -> Result<()> {
    let Some(configs) = configs else {
        bail!(
            "{}: a FLUX.1 transformer in Black Forest Labs' layout (double_blocks.*); it holds the transformer \
             only: give --config DIR, a diffusers FLUX.1 folder (its text encoders, VAE, tokenizers and scheduler \
             are used, its transformer's config.json describes the file)",
            file.display()
        )
    };
    let (part, _, config) = part(file, prefix, configs)?;
    super::parts::build_view(file, configs, dir, vec![part])?;
    eprintln!(
        "{}: a FLUX.1 {} transformer in BFL's layout; text encoders, VAE and tokenizers from {}; read through {}",
        file.display(),
        if config.guidance_embeds { "[dev]" } else { "[schnell]" },
        configs.display(),
        dir.display()
    );
    Ok(())
}

/// The transformer config `configs` gives, checked against the file: [dev] and [schnell]
/// differ by the guidance embedder.
fn transformer_config(file: &Path, prefix: &str, configs: &Path) -> Result<FluxTransformerConfig> {
    let dir = crate::models::folder::component_dir(configs, "transformer")?;
    let (_, raw) = crate::models::config::read_config::<serde_json::Value>(&dir)?;
    let config: FluxTransformerConfig =
        serde_json::from_value(raw).with_context(|| format!("{}: not a FLUX transformer config", dir.display()))?;
    let source = SafeTensorFiles::open_file(file)?;
    let guided = has_guidance(source.names(), prefix);
    if guided != config.guidance_embeds {
        bail!(
            "{}: the file's transformer {} a guidance embedder (guidance_in.*) but {}'s config has guidance_embeds = {} \
             (a [dev] file needs a [dev] folder, [schnell] a [schnell] one)",
            file.display(),
            if guided { "has" } else { "has no" },
            dir.display(),
            config.guidance_embeds
        );
    }
    Ok(config)
}

/// Writes the BFL FLUX `file` as a diffusers folder `out`: its transformer from the file
/// (in `dtype`, default as stored), everything else copied from `config_dir`.
pub fn to_diffusers(
    file: &Path,
    prefix: &str,
    config_dir: &Path,
    out: &Path,
    dtype: Option<DType>,
) -> Result<Vec<String>> {
    let (part, view, _) = part(file, prefix, config_dir)?;
    super::parts::to_diffusers(config_dir, out, vec![(part, view)], dtype)
}

/// Writes a diffusers FLUX transformer (`model`'s, or `transformer` instead) as one file in
/// BFL's layout (bare keys, as `flux1-dev.safetensors`), stored in `dtype`.
pub fn to_single_file(model: &Path, transformer: Option<&Path>, out: &Path, dtype: DType) -> Result<Vec<String>> {
    let dir = match transformer {
        Some(t) => t.to_path_buf(),
        None => crate::models::folder::component_dir(model, "transformer")?,
    };
    let (config, _) = crate::models::config::read_config::<FluxTransformerConfig>(&dir)?;
    let files = SafeTensorFiles::open_component(&dir, &["diffusion_pytorch_model"])?;
    let opened = [("transformer", "", files, super::convert::by_target(mapping(&config, "")?))];
    super::convert::write_single(&opened, out, dtype)
}

/// Whether a diffusers folder (or its `transformer/`) holds a FLUX transformer.
pub fn is_flux_folder(model: &Path) -> bool {
    crate::models::folder::denoiser_class(model).as_deref() == Some("FluxTransformer2DModel")
}
