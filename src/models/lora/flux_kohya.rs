//! FLUX LoRAs in the kohya / BFL layout that ComfyUI users share: one module per layer of
//! Black Forest Labs' own model (`lora_unet_double_blocks_3_img_attn_qkv`,
//! `lora_unet_single_blocks_7_linear1`, ...; ComfyUI's `diffusion_model.double_blocks.3...`
//! spelling too), where q, k and v (and, in single blocks, the MLP's input) are one fused
//! linear layer that diffusers splits into several.
//!
//! Reading splits a fused adapter as diffusers' `_convert_kohya_flux_lora_to_diffusers`
//! does: the shared `down` goes to every part and `up` is cut by rows, unless `up` is
//! block-diagonal over equal rank chunks, when each part gets its chunk of `down` (the same
//! update, a smaller rank). Writing fuses diffusers' parts the other way: the downs stacked
//! and the ups block-diagonal (a part without an adapter gets zero rows), or, when every
//! part shares one `down`, that `down` and the ups stacked — so that a kohya file read and
//! written again is the same file. The fused layer's sizes come from the adapters' shapes:
//! qkv is three equal parts, `linear1` q, k, v of the hidden size (its input) and the MLP.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{DType, Tensor};

use super::file::Adapter;

/// kohya's prefix of the denoiser's modules.
pub const PREFIX: &str = "lora_unet_";

/// (kohya module suffix inside a double-stream block, diffusers layers in fused order).
const DOUBLE: &[(&str, &[&str])] = &[
    ("img_attn_qkv", &["attn.to_q", "attn.to_k", "attn.to_v"]),
    ("img_attn_proj", &["attn.to_out.0"]),
    ("img_mlp_0", &["ff.net.0.proj"]),
    ("img_mlp_2", &["ff.net.2"]),
    ("img_mod_lin", &["norm1.linear"]),
    ("txt_attn_qkv", &["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
    ("txt_attn_proj", &["attn.to_add_out"]),
    ("txt_mlp_0", &["ff_context.net.0.proj"]),
    ("txt_mlp_2", &["ff_context.net.2"]),
    ("txt_mod_lin", &["norm1_context.linear"]),
];

/// The same for a single-stream block.
const SINGLE: &[(&str, &[&str])] = &[
    ("linear1", &["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]),
    ("linear2", &["proj_out"]),
    ("modulation_lin", &["norm.linear"]),
];

/// Modules outside the blocks (BFL's names), one diffusers layer each.
const OUTER: &[(&str, &str)] = &[
    ("img_in", "x_embedder"),
    ("txt_in", "context_embedder"),
    ("time_in_in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in_out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in_in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in_out_layer", "time_text_embed.text_embedder.linear_2"),
    ("guidance_in_in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in_out_layer", "time_text_embed.guidance_embedder.linear_2"),
    ("final_layer_linear", "proj_out"),
    // BFL's final modulation is (shift, scale), diffusers' `norm_out` (scale, shift): the
    // halves of `up` swap.
    ("final_layer_adaLN_modulation_1", "norm_out.linear"),
];

const SWAPPED: &str = "norm_out.linear";

/// Whether a kohya module name is FLUX's (BFL layer names).
pub fn is_flux_module(module: &str) -> bool {
    let m = normalise(module);
    m.strip_prefix(PREFIX).is_some_and(|rest| {
        rest.starts_with("double_blocks_")
            || rest.starts_with("single_blocks_")
            || OUTER.iter().any(|(k, _)| rest == *k)
    })
}

/// ComfyUI's `diffusion_model.double_blocks.0.img_attn.qkv` → `lora_unet_double_blocks_0_img_attn_qkv`.
fn normalise(module: &str) -> String {
    match module.strip_prefix("diffusion_model.") {
        Some(rest) => format!("{PREFIX}{}", rest.replace('.', "_")),
        None => module.to_string(),
    }
}

/// The diffusers layers a kohya module stands for (in fused order).
fn layers_of(module: &str) -> Option<Vec<String>> {
    let rest = normalise(module);
    let rest = rest.strip_prefix(PREFIX)?;
    if let Some((_, layer)) = OUTER.iter().find(|(k, _)| rest == *k) {
        return Some(vec![layer.to_string()]);
    }
    for (kind, table, block) in
        [("double_blocks_", DOUBLE, "transformer_blocks"), ("single_blocks_", SINGLE, "single_transformer_blocks")]
    {
        let Some(tail) = rest.strip_prefix(kind) else { continue };
        let (index, suffix) = tail.split_once('_')?;
        let index: usize = index.parse().ok()?;
        let (_, parts) = table.iter().find(|(s, _)| *s == suffix)?;
        return Some(parts.iter().map(|p| format!("{block}.{index}.{p}")).collect());
    }
    None
}

/// Rows of each part of a fused `up` with `out` rows, for a layer of `in_features` inputs.
fn split_sizes(parts: &[String], out: usize, in_features: usize) -> Result<Vec<usize>> {
    Ok(match parts.len() {
        1 => vec![out],
        3 => {
            ensure!(out.is_multiple_of(3), "a fused q/k/v adapter with {out} output rows (not 3 equal parts)");
            vec![out / 3; 3]
        }
        4 => {
            // linear1: q, k, v of the hidden size (= the layer's input), then the MLP.
            ensure!(out > 3 * in_features, "linear1: {out} output rows, expected 3 × {in_features} + the MLP's");
            vec![in_features, in_features, in_features, out - 3 * in_features]
        }
        n => bail!("a fused layer of {n} parts"),
    })
}

/// One kohya module's adapter (down [R, in], up [out, R], scale alpha/R) as the diffusers
/// layers' adapters.
pub fn split(module: &str, down: Tensor<2>, up: Tensor<2>, scale: f64) -> Result<Vec<(String, Adapter)>> {
    let parts = layers_of(module).with_context(|| format!("{module}: not a FLUX module"))?;
    let up = if parts[0] == SWAPPED { swap_halves(up) } else { up };
    let [out, rank] = up.dims();
    let sizes = split_sizes(&parts, out, down.dims()[1]).with_context(|| module.to_string())?;
    let n = parts.len();
    let ups = up.clone().split_with_sizes(sizes.clone(), 0);
    let sparse = n > 1 && rank.is_multiple_of(n) && block_diagonal(&up, &sizes, rank / n);
    Ok(parts
        .into_iter()
        .zip(ups)
        .enumerate()
        .map(|(k, (layer, part_up))| {
            let adapter = if sparse {
                let r = rank / n;
                Adapter { down: down.clone().narrow(0, k * r, r), up: part_up.narrow(1, k * r, r), scale }
            } else {
                Adapter { down: down.clone(), up: part_up, scale }
            };
            (layer, adapter)
        })
        .collect())
}

/// Whether every row block of `up` is zero outside its own chunk of `r` columns.
fn block_diagonal(up: &Tensor<2>, sizes: &[usize], r: usize) -> bool {
    let mut row = 0;
    for (j, &rows) in sizes.iter().enumerate() {
        for k in 0..sizes.len() {
            if k != j {
                let block = up.clone().narrow(0, row, rows).narrow(1, k * r, r);
                if block.abs().max().into_scalar::<f32>() != 0.0 {
                    return false;
                }
            }
        }
        row += rows;
    }
    true
}

/// `up` with its two row halves exchanged.
fn swap_halves(up: Tensor<2>) -> Tensor<2> {
    let half = up.dims()[0] / 2;
    let mut halves = up.chunk(2, 0);
    let second = halves.pop().expect("two halves");
    let first = halves.pop().expect("two halves");
    debug_assert_eq!(first.dims()[0], half);
    Tensor::cat(vec![second, first], 0)
}

/// One fused kohya module to write: (name, down [R, in], up [out, R], alpha).
pub type Fused = (String, Tensor<2>, Tensor<2>, f32);

/// The kohya modules of FLUX adapters (diffusers layer → adapter): each fused layer built
/// from its parts, every scale folded into `up` (alpha = rank). `hidden` and `mlp`: the
/// transformer's width and MLP width, the rows of a part that has no adapter.
pub fn fuse(adapters: &BTreeMap<String, Adapter>, hidden: usize, mlp: usize) -> Result<Vec<Fused>> {
    // Every kohya module with the layers it fuses.
    let mut modules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for layer in adapters.keys() {
        match kohya_module(layer) {
            Some((module, parts)) => {
                modules.insert(module, parts);
            }
            None => unknown.push(layer.clone()),
        }
    }
    ensure!(
        unknown.is_empty(),
        "layers with no FLUX kohya name (a LoRA of another model?): {}",
        unknown.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
    );
    let mut out = Vec::new();
    for (module, parts) in modules {
        let present: Vec<Option<&Adapter>> = parts.iter().map(|p| adapters.get(p)).collect();
        let any = present.iter().flatten().next().expect("a module has an adapter");
        let (device, in_features) = (any.down.device(), any.down.dims()[1]);
        let rows = |k: usize| match (parts.len(), k) {
            (4, 3) => mlp,
            (1, _) => any.up.dims()[0],
            _ => hidden,
        };
        let scaled = |a: &Adapter| a.up.clone().mul_scalar(a.scale);
        let shared = present.iter().all(|p| p.is_some_and(|a| same(&a.down, &any.down)));
        let (down, up) = if shared {
            (any.down.clone(), Tensor::cat(present.iter().map(|a| scaled(a.expect("all present"))).collect(), 0))
        } else {
            let ranks: Vec<usize> = present.iter().map(|a| a.map_or(0, Adapter::rank)).collect();
            let total: usize = ranks.iter().sum();
            let down = Tensor::cat(present.iter().flatten().map(|a| a.down.clone()).collect(), 0);
            let mut blocks = Vec::new();
            let mut col = 0;
            for (k, a) in present.iter().enumerate() {
                let mut row = vec![];
                if col > 0 {
                    row.push(Tensor::zeros([rows(k), col], (&device, DType::F32)));
                }
                if let Some(a) = a {
                    row.push(scaled(a));
                }
                let after = total - col - ranks[k];
                if after > 0 {
                    row.push(Tensor::zeros([rows(k), after], (&device, DType::F32)));
                }
                blocks.push(Tensor::cat(row, 1));
                col += ranks[k];
            }
            (down, Tensor::cat(blocks, 0))
        };
        ensure!(down.dims()[1] == in_features, "{module}: its parts disagree on the input width");
        let up = if parts[0] == SWAPPED { swap_halves(up) } else { up };
        let rank = down.dims()[0];
        out.push((module, down, up, rank as f32));
    }
    Ok(out)
}

/// Exactly equal matrices.
fn same(a: &Tensor<2>, b: &Tensor<2>) -> bool {
    a.dims() == b.dims() && (a.clone() - b.clone()).abs().max().into_scalar::<f32>() == 0.0
}

/// The kohya module a diffusers layer belongs to, and that module's layers.
fn kohya_module(layer: &str) -> Option<(String, Vec<String>)> {
    if let Some((k, _)) = OUTER.iter().find(|(_, l)| *l == layer) {
        return Some((format!("{PREFIX}{k}"), vec![layer.to_string()]));
    }
    for (block, kind, table) in
        [("transformer_blocks.", "double_blocks", DOUBLE), ("single_transformer_blocks.", "single_blocks", SINGLE)]
    {
        let Some(tail) = layer.strip_prefix(block) else { continue };
        let (index, rest) = tail.split_once('.')?;
        let (suffix, parts) = table.iter().find(|(_, parts)| parts.contains(&rest))?;
        let module = format!("{PREFIX}{kind}_{index}_{suffix}");
        return Some((module, parts.iter().map(|p| format!("{block}{index}.{p}")).collect()));
    }
    None
}

/// The transformer's width, from the adapters' shapes: the input of every block layer but
/// the second MLP layers and the single blocks' output projection, whose output it is.
pub fn hidden_size(adapters: &BTreeMap<String, Adapter>) -> Option<usize> {
    adapters.iter().find_map(|(layer, a)| {
        let output_side = layer.ends_with("ff.net.2")
            || layer.ends_with("ff_context.net.2")
            || (layer.starts_with("single_transformer_blocks.") && layer.ends_with(".proj_out"));
        let in_block = layer.starts_with("transformer_blocks.") || layer.starts_with("single_transformer_blocks.");
        match (in_block, output_side) {
            (true, true) => Some(a.up.dims()[0]),
            (true, false) => Some(a.down.dims()[1]),
            _ => None,
        }
    })
}
