//! The output folder of a run: one process at a time (a lock file with its PID), never
//! two runs mixed (a folder holding a run is refused unless resumed or overwritten, and
//! an overwrite moves the old run aside), no symlinks followed, and the leftovers of
//! killed writes cleaned up.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// What a run's folder holds once it has started (the experiment runner's own files,
/// e.g. `eval.jsonl`, are not a run).
const RUN_FILES: &[&str] = &["config.toml", "metrics.jsonl", "unet", "pytorch_lora_weights.safetensors"];

use crate::util::lock::{LOCK, pid_alive};
pub use crate::util::lock::{OutputLock, lock};

/// Whether `dir` holds (the start of) a training run.
pub fn holds_run(dir: &Path) -> bool {
    RUN_FILES.iter().any(|f| dir.join(f).symlink_metadata().is_ok())
        || super::checkpoint::list(dir).map(|l| !l.is_empty()).unwrap_or(false)
}

/// Whether `dir` holds a run that stopped before its first checkpoint and before its final
/// weights: nothing in it can be resumed, and nothing in it is a result.
pub fn holds_partial_run(dir: &Path) -> bool {
    let finished = ["unet", "pytorch_lora_weights.safetensors"].iter().any(|f| dir.join(f).symlink_metadata().is_ok());
    holds_run(dir) && !finished && super::checkpoint::list(dir).map(|l| l.is_empty()).unwrap_or(false)
}

/// Deletes the files of a run that stopped before its first checkpoint, for a caller that
/// owns the folder and restarts the same run (the experiment runner): nothing in them can
/// be resumed.
pub fn discard_partial(dir: &Path) -> Result<()> {
    if super::checkpoint::list(dir)?.is_empty() {
        for f in RUN_FILES {
            let path = dir.join(f);
            match path.symlink_metadata() {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
                Ok(_) => fs::remove_file(&path),
                Err(_) => continue,
            }
            .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Moves everything but the lock into a sibling `<name>.previous-<n>` folder; returns it.
pub fn move_aside(dir: &Path) -> Result<PathBuf> {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("run");
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let aside = (1..)
        .map(|n| parent.join(format!("{name}.previous-{n}")))
        .find(|p| p.symlink_metadata().is_err())
        .expect("a free name");
    fs::create_dir_all(&aside).with_context(|| format!("creating {}", aside.display()))?;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_name() == LOCK {
            continue;
        }
        let to = aside.join(entry.file_name());
        fs::rename(entry.path(), &to)
            .with_context(|| format!("moving {} to {}", entry.path().display(), to.display()))?;
    }
    Ok(aside)
}

/// Refuses symlinks where the run writes: a linked `unet/` would have its target overwritten.
/// `cache` may be a link: a shared latent cache checks its own identity before any reuse.
pub fn refuse_symlinks(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_symlink() && entry.file_name() != "cache" {
            bail!(
                "{} is a symbolic link inside the output folder; mapo does not write through links (remove it or \
                 choose another output_dir)",
                entry.path().display()
            );
        }
    }
    Ok(())
}

/// The PID in a temporary name written by [`crate::models::io`] (`<name>.tmp-<pid>`).
fn tmp_pid(name: &str) -> Option<u32> {
    name.rsplit_once(".tmp-").and_then(|(_, pid)| pid.parse().ok())
}

/// Removes what killed writes left: temporaries of dead processes, unfinished checkpoint
/// folders (no `state.json`) and checkpoints caught half-deleted. Runs under the lock, so
/// no live writer of this folder can own them. Returns how many entries were removed.
pub fn clean_stale(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let Ok(entries) = fs::read_dir(dir) else { return Ok(0) };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let is_dir = entry.file_type()?.is_dir();
        let stale = if name.starts_with(".tmp-checkpoint-") || name.starts_with(".del-checkpoint-") {
            true
        } else if name.starts_with("checkpoint-") && is_dir {
            !path.join("state.json").is_file()
        } else {
            tmp_pid(&name).is_some_and(|pid| !pid_alive(pid))
        };
        if stale {
            let result = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            result.with_context(|| format!("removing the stale {}", path.display()))?;
            removed += 1;
        }
    }
    if removed > 0 {
        eprintln!("{}: removed {removed} leftover(s) of interrupted writes", dir.display());
    }
    Ok(removed)
}
