//! A workaround for the `zip` crate (9.8.2, under `pytorch-reader`) refusing valid
//! `torch.save` files whose archive folder (the file stem at save time) is 21 bytes long:
//! "Invalid Central Directory header".
//!
//! torch (miniz) writes a ZIP64 end record and locator (76 bytes) between the central
//! directory and the ordinary end record, whose sizes and offsets are real values. The
//! crate then takes its zip32 path and guesses the directory's start as `end − size`, 76
//! bytes late; when the first central header is exactly 76 bytes long (46 + the 30-byte
//! name `<21 bytes>/data.pkl`) a header does sit there, the guess is taken as an archive
//! shifted by 76 bytes, and the last header read lands on the ZIP64 record.
//!
//! Detected from the file's tail; such a file is read from a copy whose end record says
//! "see the ZIP64 record" (0xFF…), which the crate reads correctly.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The end record's offset when the crate would misplace the central directory.
pub fn misread_end_record(path: &Path) -> std::io::Result<Option<u64>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut sig = [0u8; 4];
    if len < 42 {
        return Ok(None);
    }
    f.read_exact(&mut sig)?;
    if sig != *b"PK\x03\x04" {
        return Ok(None);
    }
    let tail_len = len.min(22 + 20 + 0xFFFF);
    f.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail)?;
    let Some(e) = tail.windows(4).rposition(|w| w == b"PK\x05\x06") else { return Ok(None) };
    if e < 20 || e + 22 > tail.len() {
        return Ok(None);
    }
    let u16_at = |o: usize| u16::from_le_bytes([tail[o], tail[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([tail[o], tail[o + 1], tail[o + 2], tail[o + 3]]);
    let (entries, size, offset) = (u16_at(e + 10), u32_at(e + 12), u32_at(e + 16));
    // Already pointing at the ZIP64 record, or no ZIP64 record before the end: read fine.
    if entries == u16::MAX || size == u32::MAX || offset == u32::MAX || tail[e - 20..e - 16] != *b"PK\x06\x07" {
        return Ok(None);
    }
    let end = len - tail_len + e as u64;
    let Some(guess) = end.checked_sub(size.into()).filter(|&g| g > u64::from(offset)) else { return Ok(None) };
    f.seek(SeekFrom::Start(guess))?;
    f.read_exact(&mut sig)?;
    Ok((sig == *b"PK\x01\x02").then_some(end))
}

/// A copy of the checkpoint with its end record redirected to the ZIP64 record; removed
/// when dropped.
pub struct RedirectedCopy {
    pub path: PathBuf,
}

impl RedirectedCopy {
    pub fn new(src: &Path, end: u64) -> Result<Self> {
        let name = src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = std::env::temp_dir().join(format!("mapo-{}-{name}", std::process::id()));
        let copy = Self { path };
        std::fs::copy(src, &copy.path)
            .with_context(|| format!("copying {} to {} (zip workaround)", src.display(), copy.path.display()))?;
        let mut f = std::fs::OpenOptions::new().write(true).open(&copy.path)?;
        // Entry counts, directory size and offset: 0xFF… means "in the ZIP64 record".
        f.seek(SeekFrom::Start(end + 8))?;
        f.write_all(&[0xFF; 12])?;
        f.sync_all()?;
        Ok(copy)
    }
}

impl Drop for RedirectedCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
