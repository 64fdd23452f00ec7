//! Tensors of a PyTorch checkpoint (`torch.save` pickles: `.pt`, `.pth`), read without
//! Python through the Burn project's `pytorch-reader`, as f32 host data.

use std::path::Path;

use anyhow::{Context, Result, bail};
use pytorch_reader::{DType, PytorchReader};

pub struct PthFile {
    reader: PytorchReader,
    path: std::path::PathBuf,
}

impl PthFile {
    /// `top_level_key`: the dictionary the weights sit under (`"state_dict"` for HPS), if any.
    pub fn open(path: &Path, top_level_key: Option<&str>) -> Result<Self> {
        let reader = match top_level_key {
            Some(k) => PytorchReader::with_top_level_key(path, k),
            None => PytorchReader::new(path),
        }
        .map_err(|e| anyhow::anyhow!("{}: not a readable PyTorch checkpoint: {e}", path.display()))?;
        Ok(Self { reader, path: path.to_path_buf() })
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
