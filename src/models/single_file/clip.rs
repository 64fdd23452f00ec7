//! OpenCLIP bigG (SDXL's second text encoder) in open_clip's names: one fused `in_proj`
//! per layer (q, k and v stacked by rows), `text_projection` as the matrix applied on the
//! right (transformers keeps its transpose), `positional_embedding`, `ln_final`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::{COMPONENTS, clip_names};
use crate::models::clip::ClipTextConfig;
use crate::models::io::Remapped;

pub fn open_clip_mapping(config: &ClipTextConfig) -> Result<BTreeMap<String, Remapped>> {
    let prefix = COMPONENTS[3].1;
    let width = config.hidden_size;
    let mut out = BTreeMap::new();
    for name in clip_names(config, true)? {
        let (from, rows, transpose) =
            open_clip_name(&name, width).with_context(|| format!("text_encoder_2 tensor {name}"))?;
        out.insert(name, Remapped { rows, transpose, ..Remapped::plain(format!("{prefix}{from}")) });
    }
    Ok(out)
}

/// open_clip's name of a transformers CLIP text tensor: (name, rows of a fused tensor,
/// transposed).
fn open_clip_name(name: &str, width: usize) -> Option<(String, Option<[usize; 2]>, bool)> {
    if name == "text_projection.weight" {
        return Some(("text_projection".into(), None, true));
    }
    let rest = name.strip_prefix("text_model.")?;
    let plain = |s: &str| Some((s.to_string(), None, false));
    match rest {
        "embeddings.token_embedding.weight" => return plain("token_embedding.weight"),
        "embeddings.position_embedding.weight" => return plain("positional_embedding"),
        "final_layer_norm.weight" => return plain("ln_final.weight"),
        "final_layer_norm.bias" => return plain("ln_final.bias"),
        _ => {}
    }
    let (i, inner) = rest.strip_prefix("encoder.layers.")?.split_once('.')?;
    let block = format!("transformer.resblocks.{i}");
    let (layer, param) = inner.rsplit_once('.')?;
    let qkv = |k: usize| Some((format!("{block}.attn.in_proj_{param}"), Some([k * width, width]), false));
    match layer {
        "self_attn.q_proj" => qkv(0),
        "self_attn.k_proj" => qkv(1),
        "self_attn.v_proj" => qkv(2),
        _ => {
            let l = match layer {
                "layer_norm1" => "ln_1",
                "layer_norm2" => "ln_2",
                "self_attn.out_proj" => "attn.out_proj",
                "mlp.fc1" => "mlp.c_fc",
                "mlp.fc2" => "mlp.c_proj",
                _ => return None,
            };
            Some((format!("{block}.{l}.{param}"), None, false))
        }
    }
}
