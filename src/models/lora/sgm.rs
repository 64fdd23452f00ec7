//! Layer names of the original SDXL UNet (Stability's "sgm" code: `input_blocks`,
//! `middle_block`, `output_blocks`), which kohya's sd-scripts trains on and so names its
//! LoRA modules after (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`), and
//! their diffusers equivalents (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`).
//!
//! Block indices depend on the layer counts: down block i's layer j is
//! `input_blocks.{1 + Σ_{k<i}(L_k + 1) + j}` (the `+ 1` is the downsampler, which follows the
//! layers), up block i's layer j is `output_blocks.{Σ_{k<i} U_k + j}`. Inside an attention
//! the names are the same in both codes; inside a resnet they differ (`in_layers.2` = `conv1`).

use anyhow::{Context, Result, bail};

use crate::models::unet::UNetConfig;

/// Layers per down block and per up block, the numbers the block indices depend on.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockLayout {
    pub down: Vec<usize>,
    pub up: Vec<usize>,
}

impl BlockLayout {
    pub fn of(config: &UNetConfig) -> Result<Self> {
        Ok(Self {
            down: config.down_plans()?.iter().map(|p| p.layers).collect(),
            up: config.up_plans()?.iter().map(|p| p.layers).collect(),
        })
    }

    /// SDXL's: three blocks of two layers (three per up block).
    pub fn uniform(layers_per_block: usize, blocks: usize) -> Self {
        Self { down: vec![layers_per_block; blocks], up: vec![layers_per_block + 1; blocks] }
    }

    fn down_start(&self, i: usize) -> usize {
        1 + self.down[..i].iter().map(|l| l + 1).sum::<usize>()
    }

    fn up_start(&self, i: usize) -> usize {
        self.up[..i].iter().sum()
    }
}

/// Resnet sub-layers: (diffusers, sgm).
const RESNET: [(&str, &str); 6] = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

/// Layers outside the blocks: (diffusers, sgm).
const OUTSIDE: [(&str, &str); 7] = [
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
];

/// Replaces the leading `from` of `name` (whole dotted segments) by `to`.
fn swap_prefix(name: &str, from: &str, to: &str) -> Option<String> {
    let rest = name.strip_prefix(from)?;
    (rest.is_empty() || rest.starts_with('.')).then(|| format!("{to}{rest}"))
}

fn split_index(s: &str) -> Option<(usize, &str)> {
    let (n, rest) = s.split_once('.').unwrap_or((s, ""));
    Some((n.parse().ok()?, rest))
}

fn join(parts: &[&str]) -> String {
    parts.iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join(".")
}

fn resnet_to_sgm(rest: &str) -> Result<String> {
    RESNET
        .iter()
        .find_map(|(d, s)| swap_prefix(rest, d, s))
        .with_context(|| format!("no sgm name for the resnet layer {rest:?}"))
}

fn resnet_from_sgm(rest: &str) -> Result<String> {
    RESNET
        .iter()
        .find_map(|(d, s)| swap_prefix(rest, s, d))
        .with_context(|| format!("no diffusers name for the resnet layer {rest:?}"))
}

/// The sgm name of the diffusers layer `name` (dotted, no `.weight`).
pub fn to_sgm(name: &str, layout: &BlockLayout) -> Result<String> {
    if let Some(s) = OUTSIDE.iter().find_map(|(d, s)| swap_prefix(name, d, s)) {
        return Ok(s);
    }
    let fail = || format!("{name}: not a layer of an SDXL-type UNet");
    let (block, rest) = name.split_once('.').with_context(fail)?;
    match block {
        "down_blocks" | "up_blocks" => {
            let (i, rest) = split_index(rest).with_context(fail)?;
            let (kind, rest) = rest.split_once('.').with_context(fail)?;
            let (j, rest) = split_index(rest).with_context(fail)?;
            let down = block == "down_blocks";
            let (count, start) = if down {
                (layout.down.get(i), layout.down_start(i.min(layout.down.len())))
            } else {
                (layout.up.get(i), layout.up_start(i.min(layout.up.len())))
            };
            let layers = *count.with_context(|| format!("{name}: the UNet has {} blocks", layout.down.len()))?;
            let outer = if down { "input_blocks" } else { "output_blocks" };
            match kind {
                "resnets" | "attentions" if j < layers => {
                    let n = start + j;
                    if kind == "resnets" {
                        Ok(join(&[outer, &n.to_string(), "0", &resnet_to_sgm(rest)?]))
                    } else {
                        Ok(join(&[outer, &n.to_string(), "1", rest]))
                    }
                }
                // sgm puts the downsampler in a layer of its own, its conv named `op`.
                "downsamplers" if down && j == 0 => {
                    let inner = swap_prefix(rest, "conv", "op").with_context(fail)?;
                    Ok(join(&[outer, &(start + layers).to_string(), "0", &inner]))
                }
                // ... and the upsampler after the last layer's resnet (and attention).
                "upsamplers" if !down && j == 0 => {
                    bail!("{name}: upsampler names depend on the block's attention; not supported in LoRA files")
                }
                _ => bail!(fail()),
            }
        }
        "mid_block" => {
            let (kind, rest) = rest.split_once('.').with_context(fail)?;
            let (j, rest) = split_index(rest).with_context(fail)?;
            match (kind, j) {
                ("resnets", 0 | 1) => {
                    Ok(join(&["middle_block", if j == 0 { "0" } else { "2" }, &resnet_to_sgm(rest)?]))
                }
                ("attentions", 0) => Ok(join(&["middle_block", "1", rest])),
                _ => bail!(fail()),
            }
        }
        _ => bail!(fail()),
    }
}

/// The diffusers name of the sgm layer `name`; the inverse of [`to_sgm`].
pub fn from_sgm(name: &str, layout: &BlockLayout) -> Result<String> {
    if let Some(d) = OUTSIDE.iter().find_map(|(d, s)| swap_prefix(name, s, d)) {
        return Ok(d);
    }
    let fail = || format!("{name}: not a layer of an SDXL-type UNet in sgm naming");
    let (block, rest) = name.split_once('.').with_context(fail)?;
    let (n, rest) = split_index(rest).with_context(fail)?;
    if block == "middle_block" {
        return match n {
            0 => Ok(join(&["mid_block.resnets.0", &resnet_from_sgm(rest)?])),
            1 => Ok(join(&["mid_block.attentions.0", rest])),
            2 => Ok(join(&["mid_block.resnets.1", &resnet_from_sgm(rest)?])),
            _ => bail!(fail()),
        };
    }
    let (k, rest) = split_index(rest).with_context(fail)?;
    let down = match block {
        "input_blocks" => true,
        "output_blocks" => false,
        _ => bail!(fail()),
    };
    let (counts, extra) = if down { (&layout.down, 1) } else { (&layout.up, 0) };
    let start = |i: usize| if down { layout.down_start(i) } else { layout.up_start(i) };
    let i = (0..counts.len())
        .find(|&i| n >= start(i) && n < start(i) + counts[i] + extra)
        .with_context(|| format!("{name}: block {n} is past the UNet's {} blocks", counts.len()))?;
    let j = n - start(i);
    let here = format!("{}.{i}", if down { "down_blocks" } else { "up_blocks" });
    match k {
        0 if down && j == counts[i] => {
            let inner = swap_prefix(rest, "op", "conv").with_context(fail)?;
            Ok(join(&[&here, "downsamplers.0", &inner]))
        }
        0 => Ok(join(&[&here, "resnets", &j.to_string(), &resnet_from_sgm(rest)?])),
        1 | 2 if !down && rest.starts_with("conv") => Ok(join(&[&here, "upsamplers.0", rest])),
        1 => Ok(join(&[&here, "attentions", &j.to_string(), rest])),
        _ => bail!(fail()),
    }
}

/// Names with `_` inside a segment, so that a kohya key (every `.` written as `_`) can be
/// split back into segments. Longest first.
const COMPOUNDS: [&str; 29] = [
    "time_emb_proj",
    "conv_norm_out",
    "transformer_blocks",
    "skip_connection",
    "time_embedding",
    "add_embedding",
    "output_blocks",
    "input_blocks",
    "middle_block",
    "conv_shortcut",
    "down_blocks",
    "emb_layers",
    "out_layers",
    "time_embed",
    "in_layers",
    "up_blocks",
    "mid_block",
    "label_emb",
    "linear_1",
    "linear_2",
    "proj_out",
    "proj_in",
    "conv_out",
    "conv_in",
    "to_out",
    "to_q",
    "to_k",
    "to_v",
    "ff_net",
];

/// `transformer_blocks_0_attn1_to_out_0` → `transformer_blocks.0.attn1.to_out.0`.
fn dotted(underscored: &str) -> String {
    let tokens: Vec<&str> = underscored.split('_').collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let found = COMPOUNDS.iter().find_map(|c| {
            let parts: Vec<&str> = c.split('_').collect();
            (tokens.len() >= i + parts.len() && tokens[i..i + parts.len()] == parts[..]).then_some((c, parts.len()))
        });
        match found {
            // `ff_net` is two segments (`ff.net`), kept together here only to stay unambiguous.
            Some((c, len)) if *c == "ff_net" => {
                out.extend(["ff".into(), "net".into()]);
                i += len;
            }
            Some((c, len)) => {
                out.push(c.to_string());
                i += len;
            }
            None => {
                out.push(tokens[i].to_string());
                i += 1;
            }
        }
    }
    out.join(".")
}

pub const KOHYA_UNET: &str = "lora_unet_";

/// The kohya module name of a diffusers layer (sgm naming, as sd-scripts writes for SDXL).
pub fn kohya_name(layer: &str, layout: &BlockLayout) -> Result<String> {
    Ok(format!("{KOHYA_UNET}{}", to_sgm(layer, layout)?.replace('.', "_")))
}

/// The diffusers layer of a kohya module name, in sgm naming (sd-scripts' SDXL files) or
/// in diffusers naming with `_` (`lora_unet_down_blocks_1_attentions_0_...`, which some
/// converters write).
pub fn layer_of_kohya(module: &str, layout: &BlockLayout) -> Result<String> {
    let Some(rest) = module.strip_prefix(KOHYA_UNET) else {
        bail!("{module}: not a UNet module (kohya UNet modules start with {KOHYA_UNET})")
    };
    let path = dotted(rest);
    let first = path.split('.').next().unwrap_or("");
    let sgm = ["input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out"].contains(&first);
    if sgm { from_sgm(&path, layout) } else { Ok(path) }
}
