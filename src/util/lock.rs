//! One writer per output: a lock file holding the writer's PID, created atomically
//! (`create_new`), removed when the writer is done, taken over when its process is gone.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The lock file inside a locked folder.
pub const LOCK: &str = ".mapo.lock";

/// Held while writing; removes the lock file when dropped.
#[derive(Debug)]
pub struct OutputLock {
    path: PathBuf,
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

pub fn pid_alive(pid: u32) -> bool {
    pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Takes the folder's lock (creating the folder), or says which live process holds it.
/// A lock left by a dead process is taken over.
pub fn lock(dir: &Path) -> Result<OutputLock> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    lock_at(&dir.join(LOCK), dir)
}

/// Takes the lock of a single output file: `<file>.lock` beside it.
pub fn lock_file(file: &Path) -> Result<OutputLock> {
    let mut name = file.file_name().with_context(|| format!("{}: not a file path", file.display()))?.to_os_string();
    name.push(".lock");
    lock_at(&file.with_file_name(name), file)
}

fn lock_at(path: &Path, what: &Path) -> Result<OutputLock> {
    for _ in 0..2 {
        match fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut f) => {
                write!(f, "{}", std::process::id()).with_context(|| format!("writing {}", path.display()))?;
                return Ok(OutputLock { path: path.to_path_buf() });
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(path).unwrap_or_default().trim().parse::<u32>().ok();
                match owner {
                    Some(pid) if pid_alive(pid) => bail!(
                        "{} is in use by another mapo process (PID {pid}, lock {}); wait for it or stop it",
                        what.display(),
                        path.display()
                    ),
                    _ => {
                        eprintln!("{}: removing a stale lock (process {owner:?} is gone)", what.display());
                        let _ = fs::remove_file(path);
                    }
                }
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    bail!("{}: could not take the lock {}", what.display(), path.display())
}
