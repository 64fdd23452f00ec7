//! Tensors of a PyTorch checkpoint (`torch.save` pickles: `.pt`, `.pth`), read without
//! Python through the Burn project's `pytorch-reader`, as f32 host data.

mod globals;
mod zip_fix;

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use pytorch_reader::{DType, PytorchReader};

pub struct PthFile {
    reader: PytorchReader,
    path: std::path::PathBuf,
    /// The file's size: no tensor of a `torch.save` file (stored, not deflated) is larger.
    len: u64,
    /// Held while the reader reads from it (see `zip_fix`).
    _copy: Option<zip_fix::RedirectedCopy>,
}

impl PthFile {
    /// `top_level_key`: the dictionary the weights sit under (`"state_dict"` for HPS), if any.
    /// A pickle naming anything but tensors and plain containers is refused, by name.
    pub fn open(path: &Path, top_level_key: Option<&str>) -> Result<Self> {
        let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
        if let Some(pickle) = globals::read_pickle(path)?
            && let Some(global) = globals::foreign_global(&pickle).with_context(|| format!("{}", path.display()))?
        {
            bail!(
                "{}: the checkpoint pickles {global}, which is not a tensor or a plain container; mapo reads \
                 state dicts only (save `model.state_dict()`)",
                path.display()
            );
        }
        let copy = match zip_fix::misread_end_record(path).with_context(|| format!("reading {}", path.display()))? {
            Some(end) => Some(zip_fix::RedirectedCopy::new(path, end)?),
            None => None,
        };
        let read_path = copy.as_ref().map_or(path, |c| c.path.as_path());
        let reader = match top_level_key {
            Some(k) => PytorchReader::with_top_level_key(read_path, k),
            None => PytorchReader::new(read_path),
        }
        .map_err(|e| anyhow::anyhow!("{}: not a readable PyTorch checkpoint: {e}", path.display()))?;
        Ok(Self { reader, path: path.to_path_buf(), len, _copy: copy })
    }

    pub fn names(&self) -> Vec<String> {
        let mut k = self.reader.keys();
        k.sort();
        k
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.reader.get(name).map(|t| t.shape())
    }

    /// `name` as f32 values and its shape.
    pub fn f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let t = self.reader.get(name).with_context(|| format!("{}: no tensor {name}", self.path.display()))?;
        // Checked before reading: a deflated entry of a few bytes can declare gigabytes.
        ensure!(
            t.byte_len() as u64 <= self.len,
            "{}: {name} declares {:?} {:?} ({} bytes), more than the {}-byte file holds",
            self.path.display(),
            t.dtype(),
            t.shape(),
            t.byte_len(),
            self.len
        );
        let bytes = t.read().with_context(|| format!("{}: reading {name}", self.path.display()))?;
        let values: Vec<f32> = match t.dtype() {
            DType::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            DType::F64 => bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8")) as f32).collect(),
            DType::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            DType::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => bail!("{}: {name} is {other:?}, not a float tensor", self.path.display()),
        };
        Ok((values, t.shape().to_vec()))
    }
}
