//! Helpers for diffusers `config.json` files.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// diffusers writes several per-block settings either as one value or as a list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The per-block list, repeating a single value `n` times.
    pub fn per_block(&self, n: usize, what: &str) -> Result<Vec<T>> {
        match self {
            OneOrMany::One(v) => Ok(vec![v.clone(); n]),
            OneOrMany::Many(v) if v.len() == n => Ok(v.clone()),
            OneOrMany::Many(v) => anyhow::bail!("{what} has {} entries, expected {n} (one per block)", v.len()),
        }
    }
}

/// Reads `dir/config.json`; unknown keys are kept by the caller's struct or ignored, since
/// diffusers configs carry many keys that do not change the model's structure.
pub fn read_config<T: DeserializeOwned>(dir: &Path) -> Result<(T, serde_json::Value)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let parsed =
        serde_json::from_value(raw.clone()).with_context(|| format!("{}: unsupported config", path.display()))?;
    Ok((parsed, raw))
}
