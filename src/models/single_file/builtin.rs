//! `--model FILE`: an SDXL single file seen as a diffusers folder without copying it. The
//! folder (under `~/.cache/mapo/single-file/`) holds the built-in SDXL configs, scheduler
//! and tokenizers, and per component a remap file (`models::io::REMAP_SUFFIX`) naming the
//! single file's tensors; every reader of diffusers folders then reads the single file
//! through its memory map. The file is recognised as SDXL base when every component's
//! tensors fit the built-in configs (shapes checked, nothing read); another architecture
//! converts with `mapo dev convert --to diffusers --config DIR`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};

use super::convert::{not_sdxl, precheck};
use super::{COMPONENTS, mapping};
use crate::models::io::{REMAP_SUFFIX, RemapFile, SafeTensorFiles};
use crate::util::write_atomic;

const UNET: &str = include_str!("../../../assets/sdxl/unet.json");
const VAE: &str = include_str!("../../../assets/sdxl/vae.json");
const TEXT_ENCODER: &str = include_str!("../../../assets/sdxl/text_encoder.json");
const TEXT_ENCODER_2: &str = include_str!("../../../assets/sdxl/text_encoder_2.json");
const SCHEDULER: &str = include_str!("../../../assets/sdxl/scheduler.json");

/// Where the configs come from: the built-in SDXL base ones, or a diffusers folder.
fn config(component: &str, from: Option<&Path>) -> Result<serde_json::Value> {
    if let Some(dir) = from {
        let dir = crate::models::folder::component_dir(dir, component)?;
        return Ok(crate::models::config::read_config::<serde_json::Value>(&dir)?.1);
    }
    let text = match component {
        "unet" => UNET,
        "vae" => VAE,
        "text_encoder" => TEXT_ENCODER,
        _ => TEXT_ENCODER_2,
    };
    Ok(serde_json::from_str(text)?)
}

/// Whether `model` names a single file rather than a folder.
pub fn is_single_file(model: &Path) -> bool {
    model.is_file() && model.extension().is_some_and(|e| e == "safetensors")
}

/// The diffusers folder that reads `file` with the built-in SDXL configs.
pub fn folder_for(file: &Path) -> Result<PathBuf> {
    folder_with(file, None)
}

/// The folder that reads `file` with the configs, tokenizers and scheduler of `configs` (a
/// diffusers folder of its architecture), or the built-in SDXL base ones; built once per
/// file and process.
pub fn folder_with(file: &Path, configs: Option<&Path>) -> Result<PathBuf> {
    type Built = HashMap<(PathBuf, Option<PathBuf>), PathBuf>;
    static BUILT: OnceLock<Mutex<Built>> = OnceLock::new();
    let file = std::fs::canonicalize(file).with_context(|| format!("reading {}", file.display()))?;
    let key = (file.clone(), configs.map(Path::to_path_buf));
    let built = BUILT.get_or_init(Default::default);
    if let Some(dir) = built.lock().expect("not poisoned").get(&key) {
        return Ok(dir.clone());
    }
    let dir = build(&file, configs)?;
    built.lock().expect("not poisoned").insert(key, dir.clone());
    Ok(dir)
}

fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("mapo").join("single-file")
}

fn build(file: &Path, configs: Option<&Path>) -> Result<PathBuf> {
    let source = SafeTensorFiles::open_file(file)?;
    let meta = std::fs::metadata(file)?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (file, meta.len(), meta.modified().ok(), configs).hash(&mut h);
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = cache_root().join(format!("{stem}-{:016x}", h.finish()));
    if let Some(prefix) = super::flux::prefix(source.names()) {
        super::flux::build_folder(file, &prefix, configs, &dir)?;
        return Ok(dir);
    }
    if let Some(prefix) = super::sd3::prefix(source.names()) {
        super::sd3::build_folder(file, &prefix, configs, &dir)?;
        return Ok(dir);
    }
    if super::vae::is_bare_vae(source.names()) {
        super::vae::build_folder(file, configs, &dir)?;
        return Ok(dir);
    }
    not_sdxl(file, &source)?;
    let convert = format!(
        "for another architecture, convert it with `mapo dev convert --to diffusers --model {} --config DIR --out \
         FOLDER` (DIR: a diffusers folder of its architecture)",
        file.display()
    );
    for (component, prefix) in COMPONENTS {
        if !source.names().any(|n| n.starts_with(prefix)) {
            bail!("{}: no {component} in the file (no {prefix}*); {convert}, which takes it from DIR", file.display());
        }
        let config = config(component, configs)?;
        let map = mapping(component, &config)?;
        SafeTensorFiles::remap(SafeTensorFiles::open_file(file)?, &map)
            .and_then(|view| precheck(component, &config, &view))
            .with_context(|| match configs {
                Some(dir) => format!("{}: the {component} does not fit {}", file.display(), dir.display()),
                None => format!("{}: not recognised as SDXL base ({component}); {convert}", file.display()),
            })?;
        let sub = dir.join(component);
        std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        write_atomic(&sub.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
        let stem = if component.starts_with("text_encoder") { "model" } else { "diffusion_pytorch_model" };
        let remap = RemapFile { source: file.to_path_buf(), tensors: map };
        write_atomic(&sub.join(format!("{stem}{REMAP_SUFFIX}")), serde_json::to_string(&remap)?.as_bytes())?;
    }
    if let Some(from) = configs {
        for extra in ["tokenizer", "tokenizer_2", "scheduler"] {
            super::convert::copy_dir(&from.join(extra), &dir.join(extra))?;
        }
        std::fs::copy(from.join("model_index.json"), dir.join("model_index.json"))
            .with_context(|| format!("copying {}/model_index.json", from.display()))?;
        return Ok(dir);
    }
    let scheduler = dir.join("scheduler");
    std::fs::create_dir_all(&scheduler).with_context(|| format!("creating {}", scheduler.display()))?;
    write_atomic(&scheduler.join("scheduler_config.json"), SCHEDULER.as_bytes())?;
    crate::models::clip::builtin_vocab::write_clip_tokenizer(&dir.join("tokenizer"), "<|endoftext|>")?;
    crate::models::clip::builtin_vocab::write_clip_tokenizer(&dir.join("tokenizer_2"), "!")?;
    let index = serde_json::json!({
        "_class_name": "StableDiffusionXLPipeline",
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    });
    write_atomic(&dir.join("model_index.json"), serde_json::to_string_pretty(&index)?.as_bytes())?;
    let ema = source.names().any(|n| n.starts_with("model_ema."));
    eprintln!(
        "{}: recognised as SDXL base (every tensor fits the built-in configs){}; read through {}",
        file.display(),
        if ema { "; it also holds EMA weights (model_ema.*), the UNet used is model.diffusion_model.*" } else { "" },
        dir.display()
    );
    Ok(dir)
}
