//! The VAE: diffusers names to ldm names (`encoder.down.i.block.j`, `decoder.up.{n−1−i}`,
//! `mid.block_1`, `mid.attn_1`), the mid attention's linear q/k/v/out stored as 1×1
//! convolutions.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use super::names_of;
use crate::models::io::Remapped;
use crate::models::vae::{AutoencoderKL, VaeConfig};

const PREFIX: &str = "first_stage_model.";

pub fn mapping(config: &VaeConfig) -> Result<BTreeMap<String, Remapped>> {
    let ups = config.block_out_channels.len();
    let mut out = BTreeMap::new();
    for (name, shape) in names_of(|w| AutoencoderKL::load(config, w))? {
        let (ldm, conv) = to_ldm(&name, ups).with_context(|| format!("VAE tensor {name}"))?;
        // ldm keeps the attention projections as 1×1 convolutions: [C, C, 1, 1].
        let shape = (conv && shape.len() == 2).then(|| shape.clone());
        out.insert(name, Remapped { shape, ..Remapped::plain(format!("{PREFIX}{ldm}")) });
    }
    Ok(out)
}

fn resnet(rest: &str) -> String {
    rest.replacen("conv_shortcut", "nin_shortcut", 1)
}

/// The ldm name of a diffusers VAE tensor, and whether it is an attention projection.
fn to_ldm(name: &str, ups: usize) -> Result<(String, bool)> {
    let (part, rest) = name.split_once('.').context("no component")?;
    if part == "quant_conv" || part == "post_quant_conv" {
        return Ok((name.to_string(), false));
    }
    let mut segs = rest.splitn(4, '.');
    let (a, b, c, d) =
        (segs.next().unwrap_or(""), segs.next().unwrap_or(""), segs.next().unwrap_or(""), segs.next().unwrap_or(""));
    let tail = |s: &str| s.to_string();
    let (ldm, conv) = match (a, b, c) {
        ("conv_in" | "conv_out", ..) => (rest.to_string(), false),
        ("conv_norm_out", ..) => (rest.replacen("conv_norm_out", "norm_out", 1), false),
        ("down_blocks", i, "resnets") => {
            let (j, inner) = d.split_once('.').context("resnet index")?;
            (format!("down.{i}.block.{j}.{}", resnet(inner)), false)
        }
        ("down_blocks", i, "downsamplers") => {
            (format!("down.{i}.downsample.{}", d.strip_prefix("0.").context("downsampler")?), false)
        }
        ("up_blocks", i, kind) => {
            let i: usize = i.parse()?;
            let up = ups - 1 - i;
            match kind {
                "resnets" => {
                    let (j, inner) = d.split_once('.').context("resnet index")?;
                    (format!("up.{up}.block.{j}.{}", resnet(inner)), false)
                }
                "upsamplers" => (format!("up.{up}.upsample.{}", d.strip_prefix("0.").context("upsampler")?), false),
                _ => bail!("not an up-block tensor"),
            }
        }
        ("mid_block", "resnets", j) => (format!("mid.block_{}.{}", j.parse::<usize>()? + 1, resnet(d)), false),
        ("mid_block", "attentions", "0") => {
            let (layer, param) = d.rsplit_once('.').context("attention tensor")?;
            let l = match layer {
                "group_norm" => "norm",
                "to_q" => "q",
                "to_k" => "k",
                "to_v" => "v",
                "to_out.0" => "proj_out",
                _ => bail!("not a mid-block attention tensor"),
            };
            (format!("mid.attn_1.{l}.{param}"), l != "norm")
        }
        _ => bail!("not a VAE tensor of the SDXL layout"),
    };
    Ok((format!("{part}.{}", tail(&ldm)), conv))
}
