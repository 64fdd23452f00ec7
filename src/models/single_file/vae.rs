//! The VAE: diffusers names to ldm names (`encoder.down.i.block.j`, `decoder.up.{n−1−i}`,
//! `mid.block_1`, `mid.attn_1`), the mid attention's linear q/k/v/out stored as 1×1
//! convolutions.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use super::names_of;
use crate::models::io::Remapped;
use crate::models::vae::{AutoencoderKL, VaeConfig};

/// The VAE's prefix in SDXL and SD3 single files.
pub const PREFIX: &str = "first_stage_model.";

pub fn mapping(config: &VaeConfig) -> Result<BTreeMap<String, Remapped>> {
    mapping_under(config, PREFIX)
}

/// [`mapping`] with the ldm names under `prefix` (`""`: a VAE file of its own, as FLUX's
/// `ae.safetensors`).
pub fn mapping_under(config: &VaeConfig, prefix: &str) -> Result<BTreeMap<String, Remapped>> {
    let ups = config.block_out_channels.len();
    let mut out = BTreeMap::new();
    for (name, shape) in names_of(|w| AutoencoderKL::load(config, w))? {
        let (ldm, conv) = to_ldm(&name, ups).with_context(|| format!("VAE tensor {name}"))?;
        // ldm keeps the attention projections as 1×1 convolutions: [C, C, 1, 1].
        let shape = (conv && shape.len() == 2).then(|| shape.clone());
        out.insert(name, Remapped { shape, ..Remapped::plain(format!("{prefix}{ldm}")) });
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

/// Whether a file is a VAE of its own in ldm names (bare keys, as FLUX's `ae.safetensors`).
pub fn is_bare_vae<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    let mut decoder = false;
    let mut encoder = false;
    for n in names.by_ref() {
        decoder |= n == "decoder.conv_in.weight";
        encoder |= n == "encoder.conv_in.weight";
    }
    encoder && decoder
}

/// The diffusers view of a bare VAE file in `dir`: its VAE from the file, everything else
/// from `configs` (a diffusers folder of the model it belongs to).
pub(super) fn build_folder(
    file: &std::path::Path,
    configs: Option<&std::path::Path>,
    dir: &std::path::Path,
) -> Result<()> {
    let Some(configs) = configs else {
        bail!(
            "{}: a VAE of its own (ldm names, as FLUX's ae.safetensors): give --config DIR, a diffusers folder of \
             the model it belongs to (its other components are used, its vae/config.json describes the file)",
            file.display()
        )
    };
    let part = part(file, configs)?.0;
    super::parts::build_view(file, configs, dir, vec![part])?;
    eprintln!(
        "{}: a VAE in ldm names; the rest from {}; read through {}",
        file.display(),
        configs.display(),
        dir.display()
    );
    Ok(())
}

fn part(
    file: &std::path::Path,
    configs: &std::path::Path,
) -> Result<(super::parts::Part, crate::models::io::SafeTensorFiles)> {
    let dir = crate::models::folder::component_dir(configs, "vae")?;
    let (config, _) = crate::models::config::read_config::<VaeConfig>(&dir)?;
    let part = super::parts::Part { component: "vae", map: mapping_under(&config, "")? };
    let view = part.view(file, configs, |w| AutoencoderKL::load(&config, w))?;
    Ok((part, view))
}

/// A bare VAE `file` as the diffusers folder of `configs` with that VAE.
pub fn to_diffusers(
    file: &std::path::Path,
    configs: &std::path::Path,
    out: &std::path::Path,
    dtype: Option<burn::tensor::DType>,
) -> Result<Vec<String>> {
    super::parts::to_diffusers(configs, out, vec![part(file, configs)?], dtype)
}
