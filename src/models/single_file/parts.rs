//! Single files that hold some of a pipeline's components (SD3's MMDiT files, FLUX's BFL
//! transformer files), the rest supplied by a diffusers folder (`--config DIR`): each
//! component the file holds becomes a [`Part`] (its remapped tensors, checked against the
//! folder's config), every other entry of the folder is used as it is.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::DType;

use crate::models::io::{REMAP_SUFFIX, RemapFile, Remapped, SafeTensorFiles};
use crate::models::weights::Weights;
use crate::util::write_atomic;

/// One component the file holds.
pub struct Part {
    /// Its folder in a diffusers pipeline (`transformer`, `vae`, `text_encoder_3`, ...).
    pub component: &'static str,
    /// diffusers name → where it is in the file.
    pub map: BTreeMap<String, Remapped>,
}

impl Part {
    /// The part's weights file stem in a diffusers folder.
    fn stem(&self) -> &'static str {
        if self.component.starts_with("text_encoder") { "model" } else { "diffusion_pytorch_model" }
    }

    /// The file's tensors of this part, seen under diffusers' names, checked by `build`
    /// (the component's model built from its config without allocating).
    pub fn view<M>(
        &self,
        file: &Path,
        configs: &Path,
        build: impl FnOnce(&Weights) -> Result<M>,
    ) -> Result<SafeTensorFiles> {
        let what = || format!("{}: the {} does not fit {}", file.display(), self.component, configs.display());
        let view = SafeTensorFiles::remap(SafeTensorFiles::open_file(file)?, &self.map).with_context(what)?;
        Weights::precheck(&view, None, build).with_context(what)?;
        Ok(view)
    }
}

/// The folder's entries other than `parts`' components.
fn others(configs: &Path, parts: &[Part]) -> Result<Vec<std::fs::DirEntry>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(configs).with_context(|| format!("reading {}", configs.display()))? {
        let entry = entry?;
        if !parts.iter().any(|p| entry.file_name() == p.component) {
            out.push(entry);
        }
    }
    Ok(out)
}

/// The diffusers view of `file` in `dir`: each part a remap of the file (nothing copied),
/// beside its config from `configs`; every other entry of `configs` linked (T5 alone is
/// 9.5 GB). The parts must have been checked ([`Part::view`]). Processes that build the
/// same view at once (the cache folder is shared) write the same files, each atomically.
pub fn build_view(file: &Path, configs: &Path, dir: &Path, parts: Vec<Part>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in others(configs, &parts)? {
        let (from, to) = (std::fs::canonicalize(entry.path())?, dir.join(entry.file_name()));
        if to.symlink_metadata().is_err() {
            link(&from, &to)?;
        }
    }
    for part in parts {
        let sub = dir.join(part.component);
        std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
        let config = crate::models::folder::component_dir(configs, part.component)?.join("config.json");
        let text = std::fs::read(&config).with_context(|| format!("reading {}", config.display()))?;
        write_atomic(&sub.join("config.json"), &text)?;
        let stem = part.stem();
        let remap = RemapFile { source: file.to_path_buf(), tensors: part.map };
        write_atomic(&sub.join(format!("{stem}{REMAP_SUFFIX}")), serde_json::to_string(&remap)?.as_bytes())?;
    }
    Ok(())
}

/// `to` made to stand for `from`; one made meanwhile by another process is as good.
fn link(from: &Path, to: &Path) -> Result<()> {
    #[cfg(unix)]
    return match std::os::unix::fs::symlink(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r.with_context(|| format!("linking {}", to.display())),
    };
    #[cfg(not(unix))]
    {
        if from.is_dir() {
            super::convert::copy_dir(from, to)
        } else {
            std::fs::copy(from, to).map(drop).with_context(|| format!("copying {}", from.display()))
        }
    }
}

/// A diffusers folder `out` from `file`'s parts (their views, checked) in `dtype` (None: as
/// stored), every other entry copied from `configs`. Returns what came from where.
pub fn to_diffusers(
    configs: &Path,
    out: &Path,
    parts: Vec<(Part, SafeTensorFiles)>,
    dtype: Option<DType>,
) -> Result<Vec<String>> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut report = Vec::new();
    let bare: Vec<Part> = parts.iter().map(|(p, _)| Part { component: p.component, map: BTreeMap::new() }).collect();
    for entry in others(configs, &bare)? {
        let to = out.join(entry.file_name());
        if entry.file_type()?.is_dir() || entry.path().is_dir() {
            super::convert::copy_dir(&entry.path(), &to)?;
            report.push(format!("{}: from {}", entry.file_name().to_string_lossy(), configs.display()));
        } else {
            std::fs::copy(entry.path(), &to).with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    for (part, view) in &parts {
        let target = out.join(part.component);
        std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        super::convert::write_view(view, &target.join(format!("{}.safetensors", part.stem())), dtype)?;
        let config = crate::models::folder::component_dir(configs, part.component)?.join("config.json");
        std::fs::copy(&config, target.join("config.json")).with_context(|| format!("copying {}", config.display()))?;
        report.push(format!("{}: {} tensors from the file", part.component, part.map.len()));
    }
    Ok(report)
}

/// `names` each read from `prefix` + the same name (text encoders kept in transformers' names).
pub fn prefixed(names: Vec<String>, prefix: &str) -> BTreeMap<String, Remapped> {
    names.into_iter().map(|n| (n.clone(), Remapped::plain(format!("{prefix}{n}")))).collect()
}
