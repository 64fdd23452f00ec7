//! The UNet: diffusers names to sgm names (`models::lora::sgm`, which kohya LoRA files use
//! too), plus the upsamplers, whose sgm index depends on whether the up block attends.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::names_of;
use crate::models::io::Remapped;
use crate::models::lora::BlockLayout;
use crate::models::lora::sgm::to_sgm;
use crate::models::unet::{UNet2DConditionModel, UNetConfig};

const PREFIX: &str = "model.diffusion_model.";

pub fn mapping(config: &UNetConfig) -> Result<BTreeMap<String, Remapped>> {
    let layout = BlockLayout::of(config)?;
    let attends: Vec<bool> = config.up_plans()?.iter().map(|p| p.cross_attention).collect();
    let mut out = BTreeMap::new();
    for (name, _) in names_of(|w| UNet2DConditionModel::load(config, w))? {
        let (layer, param) = name.rsplit_once('.').with_context(|| format!("{name}: no parameter name"))?;
        let sgm = match upsampler(layer, &layout, &attends) {
            Some(s) => s,
            None => to_sgm(layer, &layout)?,
        };
        out.insert(name.clone(), Remapped::plain(format!("{PREFIX}{sgm}.{param}")));
    }
    Ok(out)
}

/// `up_blocks.i.upsamplers.0.conv` → `output_blocks.{last layer of block i}.{1|2}.conv`:
/// sgm appends the upsampler to the block's last layer, after its resnet (index 1) or
/// after its resnet and attention (index 2).
fn upsampler(layer: &str, layout: &BlockLayout, attends: &[bool]) -> Option<String> {
    let rest = layer.strip_prefix("up_blocks.")?;
    let (i, rest) = rest.split_once('.')?;
    let inner = rest.strip_prefix("upsamplers.0.")?;
    let i: usize = i.parse().ok()?;
    let last = layout.up[..=i].iter().sum::<usize>() - 1;
    Some(format!("output_blocks.{last}.{}.{inner}", if attends[i] { 2 } else { 1 }))
}
