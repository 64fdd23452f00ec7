//! open_clip checkpoints (HPSv2/v2.1: a torch pickle `{'state_dict': ...}` of an open_clip
//! `CLIP`), loaded into the transformers-layout [`ClipModel`]: open_clip's fused attention
//! input (`attn.in_proj_weight` [3W, W]) is split into q/k/v, its projections (`proj`,
//! `text_projection`: [W, E], applied as `x @ P`) become bias-free linears (`Pᵀ`), and the
//! rest is renamed. The config is an open_clip model config (`ViT-H-14.json`).

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::{DType, Device, TensorData};
use serde::Deserialize;

use super::config::ClipTextConfig;
use super::model::{ClipModel, ClipModelConfig};
use super::vision::ClipVisionConfig;
use crate::models::io::{PendingTensor, SafeTensorFiles, transpose, write_safetensors};
use crate::models::pth::PthFile;

#[derive(Debug, Clone, Deserialize)]
pub struct OpenClipConfig {
    pub embed_dim: usize,
    pub vision_cfg: VisionCfg,
    pub text_cfg: TextCfg,
    #[serde(default)]
    pub quick_gelu: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VisionCfg {
    pub image_size: usize,
    pub layers: usize,
    pub width: usize,
    #[serde(default = "sixty_four")]
    pub head_width: usize,
    #[serde(default = "four")]
    pub mlp_ratio: f64,
    pub patch_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TextCfg {
    #[serde(default = "seventy_seven")]
    pub context_length: usize,
    #[serde(default = "vocab")]
    pub vocab_size: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    #[serde(default = "four")]
    pub mlp_ratio: f64,
}

fn sixty_four() -> usize {
    64
}
fn four() -> f64 {
    4.0
}
fn seventy_seven() -> usize {
    77
}
fn vocab() -> usize {
    49408
}

/// open_clip's `ViT-H-14.json` (what HPSv2 and v2.1 are).
pub const VIT_H_14: &str = r#"{"embed_dim": 1024,
  "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}}"#;

impl OpenClipConfig {
    pub fn read(path: Option<&Path>) -> Result<Self> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            None => VIT_H_14.to_string(),
        };
        let what = path.map_or("the built-in ViT-H-14 config".to_string(), |p| p.display().to_string());
        serde_json::from_str(&text).with_context(|| format!("{what}: not an open_clip model config"))
    }

    /// The same model in transformers' terms.
    pub fn to_transformers(&self) -> Result<ClipModelConfig> {
        let (v, t) = (&self.vision_cfg, &self.text_cfg);
        ensure!(
            v.width.is_multiple_of(v.head_width),
            "vision_cfg: width {} is not a multiple of head_width {}",
            v.width,
            v.head_width
        );
        let act = if self.quick_gelu { "quick_gelu" } else { "gelu" };
        Ok(ClipModelConfig {
            text_config: ClipTextConfig {
                vocab_size: t.vocab_size,
                hidden_size: t.width,
                intermediate_size: (t.width as f64 * t.mlp_ratio) as usize,
                num_hidden_layers: t.layers,
                num_attention_heads: t.heads,
                max_position_embeddings: t.context_length,
                hidden_act: act.into(),
                layer_norm_eps: 1e-5,
                projection_dim: Some(self.embed_dim),
                // open_clip pools at argmax(ids): the end token has the largest id.
                eos_token_id: 2,
                architectures: Vec::new(),
            },
            vision_config: ClipVisionConfig {
                hidden_size: v.width,
                intermediate_size: (v.width as f64 * v.mlp_ratio) as usize,
                num_hidden_layers: v.layers,
                num_attention_heads: v.width / v.head_width,
                image_size: v.image_size,
                patch_size: v.patch_size,
                num_channels: 3,
                hidden_act: act.into(),
                layer_norm_eps: 1e-5,
            },
            projection_dim: self.embed_dim,
        })
    }
}

/// transformers' name for an open_clip key (None: a fused or transposed tensor, or not
/// part of the model).
fn renamed(key: &str) -> Option<String> {
    let layer = |rest: &str| -> Option<String> {
        let (i, inner) = rest.split_once('.')?;
        let inner = match inner {
            "ln_1.weight" => "layer_norm1.weight",
            "ln_1.bias" => "layer_norm1.bias",
            "ln_2.weight" => "layer_norm2.weight",
            "ln_2.bias" => "layer_norm2.bias",
            "attn.out_proj.weight" => "self_attn.out_proj.weight",
            "attn.out_proj.bias" => "self_attn.out_proj.bias",
            "mlp.c_fc.weight" => "mlp.fc1.weight",
            "mlp.c_fc.bias" => "mlp.fc1.bias",
            "mlp.c_proj.weight" => "mlp.fc2.weight",
            "mlp.c_proj.bias" => "mlp.fc2.bias",
            _ => return None,
        };
        Some(format!("encoder.layers.{i}.{inner}"))
    };
    if let Some(rest) = key.strip_prefix("visual.transformer.resblocks.") {
        return layer(rest).map(|l| format!("vision_model.{l}"));
    }
    if let Some(rest) = key.strip_prefix("transformer.resblocks.") {
        return layer(rest).map(|l| format!("text_model.{l}"));
    }
    let name = match key {
        "visual.conv1.weight" => "vision_model.embeddings.patch_embedding.weight",
        "visual.class_embedding" => "vision_model.embeddings.class_embedding",
        "visual.positional_embedding" => "vision_model.embeddings.position_embedding.weight",
        "visual.ln_pre.weight" => "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias" => "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight" => "vision_model.post_layernorm.weight",
        "visual.ln_post.bias" => "vision_model.post_layernorm.bias",
        "token_embedding.weight" => "text_model.embeddings.token_embedding.weight",
        "positional_embedding" => "text_model.embeddings.position_embedding.weight",
        "ln_final.weight" => "text_model.final_layer_norm.weight",
        "ln_final.bias" => "text_model.final_layer_norm.bias",
        "logit_scale" => "logit_scale",
        _ => return None,
    };
    Some(name.to_string())
}

/// Every tensor's declared shape against the config's, before any is read (a deflated
/// checkpoint of a megabyte can declare gigabytes; an absurd config would ask for them).
fn check_shapes(file: &PthFile, names: &[String], hf: &ClipModelConfig) -> Result<()> {
    let expected = ClipModel::expected_shapes(hf)?;
    let mut errors = Vec::new();
    let mut expect = |to: String, got: Vec<usize>| match expected.get(&to) {
        Some(want) if *want != got => errors.push(format!("{to}: {got:?} in the file, {want:?} for the config")),
        _ => {}
    };
    for name in names {
        let key = name.strip_prefix("module.").unwrap_or(name);
        let Some(shape) = file.shape(name).map(<[usize]>::to_vec) else { continue };
        if let Some(to) = renamed(key) {
            expect(to, shape);
        } else if let Some(base) =
            key.strip_suffix(".attn.in_proj_weight").or_else(|| key.strip_suffix(".attn.in_proj_bias"))
        {
            let what = if key.ends_with("weight") { "weight" } else { "bias" };
            let prefix = if base.starts_with("visual.") { "vision_model" } else { "text_model" };
            let i = base.rsplit('.').next().unwrap_or("0");
            let mut sub = shape.clone();
            if let Some(s) = sub.first_mut() {
                *s /= 3;
            }
            expect(format!("{prefix}.encoder.layers.{i}.self_attn.q_proj.{what}"), sub);
        } else if key == "visual.proj" || key == "text_projection" {
            let to = if key == "visual.proj" { "visual_projection.weight" } else { "text_projection.weight" };
            expect(to.into(), shape.iter().rev().copied().collect());
        }
    }
    ensure!(errors.is_empty(), "tensors whose shape the config does not give:\n  {}", errors.join("\n  "));
    Ok(())
}

/// Loads an open_clip checkpoint (`state_dict` inside the pickle, or at its root; a
/// `module.` prefix from DataParallel is dropped). The renamed weights pass through a
/// temporary safetensors file, so the model is held once, not twice, while loading.
pub fn load(checkpoint: &Path, config: &OpenClipConfig, device: &Device) -> Result<(ClipModel, ClipModelConfig)> {
    let file = PthFile::open(checkpoint, Some("state_dict")).or_else(|_| PthFile::open(checkpoint, None))?;
    let hf = config.to_transformers()?;
    let names = file.names();
    let strip = |n: &str| n.strip_prefix("module.").unwrap_or(n).to_string();
    check_shapes(&file, &names, &hf).with_context(|| format!("{}", checkpoint.display()))?;
    let mut tensors: Vec<PendingTensor> = Vec::new();
    let mut unknown = Vec::new();
    for name in &names {
        let key = strip(name);
        let push = |tensors: &mut Vec<PendingTensor>, to: String, values: Vec<f32>, shape: Vec<usize>| {
            let s = shape.clone();
            tensors.push(PendingTensor {
                name: to,
                shape,
                dtype: DType::F32,
                data: Box::new(move || TensorData::new(values, s)),
            });
        };
        if let Some(to) = renamed(&key) {
            let (v, shape) = file.f32(name)?;
            push(&mut tensors, to, v, shape);
        } else if let Some(base) =
            key.strip_suffix(".attn.in_proj_weight").or_else(|| key.strip_suffix(".attn.in_proj_bias"))
        {
            let (v, shape) = file.f32(name)?;
            let what = if key.ends_with("weight") { "weight" } else { "bias" };
            ensure!(
                shape[0] % 3 == 0,
                "{}: {key} has shape {shape:?}, not 3 stacked projections",
                checkpoint.display()
            );
            let part = v.len() / 3;
            let prefix = if base.starts_with("visual.") { "vision_model" } else { "text_model" };
            let i = base.rsplit('.').next().unwrap_or("0");
            let mut sub = shape.clone();
            sub[0] /= 3;
            for (k, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                let to = format!("{prefix}.encoder.layers.{i}.self_attn.{proj}.{what}");
                push(&mut tensors, to, v[k * part..(k + 1) * part].to_vec(), sub.clone());
            }
        } else if key == "visual.proj" || key == "text_projection" {
            let (v, shape) = file.f32(name)?;
            ensure!(
                shape.len() == 2,
                "{}: {key} has shape {shape:?}, expected [width, embed_dim]",
                checkpoint.display()
            );
            let to = if key == "visual.proj" { "visual_projection.weight" } else { "text_projection.weight" };
            push(&mut tensors, to.into(), transpose(v, Some((shape[0], shape[1]))), vec![shape[1], shape[0]]);
        } else if key != "attn_mask" && !key.ends_with(".attn_mask") {
            unknown.push(key);
        }
    }
    if !unknown.is_empty() {
        bail!(
            "{}: tensors an open_clip CLIP of this layout does not have: {}",
            checkpoint.display(),
            unknown.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let tmp = std::env::temp_dir().join(format!("mapo-open-clip-{}.safetensors", std::process::id()));
    write_safetensors(&tmp, tensors)?;
    let files = SafeTensorFiles::open_file(&tmp);
    // The mapping keeps the data readable after the name is gone (Unix).
    let _ = std::fs::remove_file(&tmp);
    let model = ClipModel::from_files(&hf, &files?, &checkpoint.display().to_string(), device, DType::F32)?;
    Ok((model, hf))
}
