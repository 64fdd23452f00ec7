//! SDXL single-file checkpoints (Stability's original layout, what A1111, ComfyUI and
//! Civitai share) as diffusers components and back. Each component's mapping is a table
//! from its diffusers tensor names (listed by building the model from its config without
//! weights, so any layer counts map) to the single file's tensors ([`Remapped`]: a name, a
//! row range of a fused q/k/v projection, a reshape of a 1×1 convolution, a transpose):
//!
//! - UNet under `model.diffusion_model.` in sgm naming ([`unet`]);
//! - VAE under `first_stage_model.` in ldm naming ([`vae`]);
//! - CLIP ViT-L under `conditioner.embedders.0.transformer.` (transformers' names) and
//!   OpenCLIP bigG under `conditioner.embedders.1.model.` (open_clip's) ([`clip`]).
//!
//! Reading is a remapped view of the memory-mapped file (nothing copied); writing streams
//! one tensor at a time.

pub mod builtin;
pub mod clip;
pub mod convert;
pub mod flux;
pub mod parts;
pub mod sd3;
pub mod unet;
pub mod vae;

use std::collections::BTreeMap;

use anyhow::Result;
use burn::tensor::Device;

use crate::models::io::Remapped;
use crate::models::weights::Weights;

/// The components of an SDXL single file: the diffusers folder name and the file's prefix.
pub const COMPONENTS: [(&str, &str); 4] = [
    ("unet", "model.diffusion_model."),
    ("vae", "first_stage_model."),
    ("text_encoder", "conditioner.embedders.0.transformer."),
    ("text_encoder_2", "conditioner.embedders.1.model."),
];

/// Every tensor name and shape a model built by `build` reads (no weights: placeholders).
fn names_of<M>(build: impl FnOnce(&Weights) -> Result<M>) -> Result<Vec<(String, Vec<usize>)>> {
    let w = Weights::shapes_only(&Device::default());
    drop(build(&w)?);
    Ok(w.requested())
}

/// A CLIP text tensor as transformers names it in its files (`text_model.` before all but
/// the projection); built without a file the model asks without the prefix.
fn transformers_name(name: &str) -> String {
    if name.starts_with("text_projection") { name.to_string() } else { format!("text_model.{name}") }
}

/// Every CLIP text tensor name of `config` (transformers' file names).
pub(super) fn clip_names(config: &crate::models::clip::ClipTextConfig, with_projection: bool) -> Result<Vec<String>> {
    let names = names_of(|w| crate::models::clip::ClipTextModel::load(config, w, with_projection))?;
    Ok(names.into_iter().map(|(n, _)| transformers_name(&n)).collect())
}

/// `diffusers name → where it is in the file` for one component, from its config.
pub fn mapping(component: &str, config: &serde_json::Value) -> Result<BTreeMap<String, Remapped>> {
    let plain = Remapped::plain;
    match component {
        "unet" => unet::mapping(&serde_json::from_value(config.clone())?),
        "vae" => vae::mapping(&serde_json::from_value(config.clone())?),
        "text_encoder" => {
            let c = serde_json::from_value(config.clone())?;
            let names = clip_names(&c, false)?;
            Ok(names.into_iter().map(|n| (n.clone(), plain(format!("{}{n}", COMPONENTS[2].1)))).collect())
        }
        "text_encoder_2" => clip::open_clip_mapping(&serde_json::from_value(config.clone())?),
        other => anyhow::bail!("{other}: not a component of an SDXL single file"),
    }
}
