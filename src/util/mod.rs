//! Small file helpers every layer uses: atomic writes (temp file + rename), JSON lines,
//! and the process's peak resident memory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub mod lock;

/// `<name>.tmp-<pid>` beside `path` (a dead writer's leftovers are recognised by the PID);
/// an error when `path` names a folder, which a file can never replace.
pub(crate) fn tmp_path(path: &Path) -> Result<PathBuf> {
    let Some(file) = path.file_name().filter(|_| !path.is_dir()) else {
        bail!("{} is a folder: give the path of a file to write", path.display())
    };
    let mut name = file.to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    Ok(path.with_file_name(name))
}

pub(crate) fn rename_into_place(tmp: &Path, path: &Path) -> Result<()> {
    std::fs::rename(tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        anyhow::Error::new(e).context(format!("renaming {} to {}", tmp.display(), path.display()))
    })
}

/// Writes a small file (config, JSON, an image) atomically: through a temporary beside it,
/// synced before the rename, so a full disk is an error here and never a short file in
/// place of the old one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path)?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("writing {}", tmp.display())));
    }
    rename_into_place(&tmp, path)
}

/// Saves an image atomically, its format from the extension. Encoded in memory first:
/// `image`'s own `save` drops its buffered writer's last flush error, which on a full disk
/// leaves a 0-byte file and reports success.
pub fn save_image(path: &Path, img: &image::RgbImage) -> Result<()> {
    let format = image::ImageFormat::from_path(path).with_context(|| format!("{}: image format", path.display()))?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .with_context(|| format!("encoding {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// Every line of a JSON-lines file that parses (none when the file is missing).
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}

/// Appends one JSON line (one `write` call, so a reader never sees half a line).
pub fn append_jsonl(path: &Path, line: &impl serde::Serialize) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(format!("{}\n", serde_json::to_string(line)?).as_bytes())
        .with_context(|| format!("appending to {}", path.display()))
}

/// The process's peak resident set (Linux `VmHWM`), in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// The process's resident memory now (VmRSS), where the OS reports it.
pub fn current_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Linux resets the peak-RSS counter (VmHWM) on writing 5 to clear_refs; elsewhere the
/// figure stays the process's peak so far.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
