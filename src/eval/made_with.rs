//! What made the images cached in an evaluation folder (`images/<variant>/made_with.json`):
//! an image is reused only when the settings that made it are this run's, so a rerun into
//! the same `--out` with other steps, guidance, size, precision or variant is refused
//! instead of reporting new settings over old images. Prompts may grow (more prompts, more
//! seeds add images); a prompt that changed at an index is refused.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

const FILE: &str = "made_with.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MadeWith {
    pub model: String,
    /// The variant's spec (`base`, `unet:DIR`, `lora:FILE`).
    pub variant: String,
    pub sampler: String,
    pub steps: usize,
    pub guidance: f64,
    /// `None`: the model's default size.
    pub size: Option<usize>,
    pub precision: String,
    /// Image `NNNNN-sS.png` is of `prompts[NNNNN]`.
    pub prompts: Vec<String>,
}

/// Checks `dir`'s record against `want` and writes the record this run extends it to.
pub fn claim(dir: &Path, want: &MadeWith) -> Result<()> {
    let path = dir.join(FILE);
    let merged = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let had: MadeWith = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a mapo image record", path.display()))?;
            let mut changed = Vec::new();
            let mut note = |what: &str, a: String, b: String| {
                if a != b {
                    changed.push(format!("{what}: {a} then, {b} now"));
                }
            };
            note("model", had.model.clone(), want.model.clone());
            note("variant", had.variant.clone(), want.variant.clone());
            note("sampler", had.sampler.clone(), want.sampler.clone());
            note("steps", had.steps.to_string(), want.steps.to_string());
            note("guidance", had.guidance.to_string(), want.guidance.to_string());
            note("size", format!("{:?}", had.size), format!("{:?}", want.size));
            note("precision", had.precision.clone(), want.precision.clone());
            if let Some(i) = had.prompts.iter().zip(&want.prompts).position(|(a, b)| a != b) {
                note(&format!("prompt {i}"), format!("{:?}", had.prompts[i]), format!("{:?}", want.prompts[i]));
            }
            if !changed.is_empty() {
                bail!(
                    "{} holds images made with other settings ({}); give another --out, or remove the folder",
                    dir.display(),
                    changed.join("; ")
                );
            }
            let longer = if had.prompts.len() > want.prompts.len() { had.prompts } else { want.prompts.clone() };
            MadeWith { prompts: longer, ..want.clone() }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let images = std::fs::read_dir(dir)
                .map(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "png")))
                .unwrap_or(false);
            if images {
                bail!(
                    "{} holds images without a record of what made them ({FILE}; an older mapo?): give another \
                     --out, or remove the folder",
                    dir.display()
                );
            }
            want.clone()
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::util::write_atomic(&path, serde_json::to_string_pretty(&merged)?.as_bytes())
}
