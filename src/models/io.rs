//! Safetensors files and diffusers model folders: memory-mapped reading (single file or
//! sharded with an `.index.json`), and streaming, atomic writing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Int, Tensor, TensorData, bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

pub use crate::util::write_atomic;
use crate::util::{rename_into_place, tmp_path};

/// One tensor's bytes inside a memory-mapped file.
pub struct TensorView<'a> {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
    pub file: &'a Path,
    /// A 2-D tensor stored as its transpose (`shape` is the transposed one's).
    pub transposed: bool,
    /// Seen with the halves of its rows exchanged ([`Remapped::swap_halves`]).
    pub swapped: bool,
}

/// The suffix of a remap file: a component whose weights are tensors of another file
/// under other names (a single-file checkpoint seen as a diffusers folder).
pub const REMAP_SUFFIX: &str = ".mapo-remap.json";

/// Where one tensor of a remapped view comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Remapped {
    /// The tensor's name in the source file.
    pub from: String,
    /// Only rows `[start, start + len)` of it (a fused q/k/v projection's part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<[usize; 2]>,
    /// Seen with this shape (the same number of values: a 1×1 convolution as a matrix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<usize>>,
    /// Seen transposed (a 2-D tensor stored as `x @ P` where diffusers keeps `P^T`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub transpose: bool,
    /// Seen with the two halves of its rows exchanged (BFL's final modulation is (shift,
    /// scale), diffusers' `norm_out` (scale, shift)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub swap_halves: bool,
    /// Not in the file: the n×n identity (f32) instead, as diffusers takes SD3's CLIP L
    /// projection, which SD3 single files leave out. `from` is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<usize>,
}

impl Remapped {
    /// `from` as it is.
    pub fn plain(from: String) -> Self {
        Self { from, rows: None, shape: None, transpose: false, swap_halves: false, identity: None }
    }
}

/// An anonymous read-only mapping holding an n×n f32 identity matrix.
fn identity_shard(n: usize) -> Result<Shard> {
    let mut map = memmap2::MmapMut::map_anon(n * n * 4).context("allocating an identity matrix")?;
    for i in 0..n {
        map[(i * n + i) * 4..(i * n + i + 1) * 4].copy_from_slice(&1f32.to_le_bytes());
    }
    let mmap = map.make_read_only().context("sealing an identity matrix")?;
    let path = PathBuf::from(format!("<identity {n}×{n}>"));
    Ok(Shard { path, mmap, data_start: 0, metadata: BTreeMap::new(), anonymous: true })
}

/// A remap file's contents: the source and every tensor of the view.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RemapFile {
    pub source: PathBuf,
    pub tensors: BTreeMap<String, Remapped>,
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (8-byte length + JSON header).
    data_start: usize,
    /// The header's `__metadata__` strings.
    metadata: BTreeMap<String, String>,
    /// Made in memory (an identity): its pages are the only copy, never released.
    anonymous: bool,
}

struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    range: (usize, usize),
    transposed: bool,
    swapped: bool,
}

/// A set of safetensors files seen as one name → tensor map. Files are memory-mapped, so
/// opening costs nothing and each tensor is read (and converted) only when asked for.
pub struct SafeTensorFiles {
    shards: Vec<Shard>,
    entries: BTreeMap<String, Entry>,
}

impl SafeTensorFiles {
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::new();
        let mut entries = BTreeMap::new();
        for path in paths {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: the file is opened read-only; like every mmap-based reader we assume
            // it is not truncated by another process while we read it.
            let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("memory-mapping {}", path.display()))?;
            let (header_len, meta) = SafeTensors::read_metadata(&mmap)
                .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
            let shard = shards.len();
            for (name, info) in meta.tensors() {
                let entry = Entry {
                    shard,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: info.data_offsets,
                    transposed: false,
                    swapped: false,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    bail!("tensor {name} appears in more than one file (last: {})", path.display());
                }
            }
            let metadata = meta.metadata().clone().unwrap_or_default().into_iter().collect();
            shards.push(Shard { path: path.clone(), mmap, data_start: 8 + header_len, metadata, anonymous: false });
        }
        Ok(Self { shards, entries })
    }

    pub fn open_file(path: &Path) -> Result<Self> {
        Self::open(&[path.to_path_buf()])
    }

    /// The view a remap file describes: its source's tensors under their new names, sliced,
    /// reshaped or transposed, without reading any of them. Every source tensor named must
    /// exist with a shape that fits.
    pub fn open_remapped(remap: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(remap).with_context(|| format!("reading {}", remap.display()))?;
        let map: RemapFile =
            serde_json::from_str(&text).with_context(|| format!("{} is not a remap file", remap.display()))?;
        let source = Self::open_file(&map.source)?;
        Self::remap(source, &map.tensors).with_context(|| format!("{} (for {})", map.source.display(), remap.display()))
    }

    /// `source`'s tensors as `tensors` says (see [`Remapped`]).
    pub fn remap(source: Self, tensors: &BTreeMap<String, Remapped>) -> Result<Self> {
        let mut entries = BTreeMap::new();
        let mut shards = source.shards;
        for (name, r) in tensors {
            if let Some(n) = r.identity {
                let shard = shards.len();
                shards.push(identity_shard(n)?);
                let entry = Entry {
                    shard,
                    dtype: Dtype::F32,
                    shape: vec![n, n],
                    range: (0, n * n * 4),
                    transposed: false,
                    swapped: false,
                };
                entries.insert(name.clone(), entry);
                continue;
            }
            let e = source.entries.get(&r.from).with_context(|| format!("no tensor {} (for {name})", r.from))?;
            let (mut shape, mut range) = (e.shape.clone(), e.range);
            if let Some([start, len]) = r.rows {
                let rows = shape.first().copied().unwrap_or(0);
                anyhow::ensure!(
                    start + len <= rows,
                    "{}: rows {start}..{} of {rows} (for {name})",
                    r.from,
                    start + len
                );
                let row_bytes = (range.1 - range.0) / rows.max(1);
                range = (range.0 + start * row_bytes, range.0 + (start + len) * row_bytes);
                shape[0] = len;
            }
            if let Some(s) = &r.shape {
                anyhow::ensure!(
                    s.iter().product::<usize>() == shape.iter().product::<usize>(),
                    "{} {shape:?} cannot be seen as {s:?} (for {name})",
                    r.from
                );
                shape = s.clone();
            }
            if r.transpose {
                anyhow::ensure!(shape.len() == 2, "{} {shape:?}: only a matrix transposes (for {name})", r.from);
                shape.reverse();
            }
            anyhow::ensure!(
                !r.swap_halves || shape.first().is_some_and(|n| n % 2 == 0),
                "{} {shape:?}: only an even number of rows swaps halves (for {name})",
                r.from
            );
            let entry =
                Entry { shard: e.shard, dtype: e.dtype, shape, range, transposed: r.transpose, swapped: r.swap_halves };
            entries.insert(name.clone(), entry);
        }
        Ok(Self { shards, entries })
    }

    /// The weights of one diffusers component folder: `<stem>.safetensors`, or the shards
    /// listed by `<stem>.safetensors.index.json`, or their `.fp16` variants.
    pub fn open_component(dir: &Path, stems: &[&str]) -> Result<Self> {
        for stem in stems {
            let remap = dir.join(format!("{stem}{REMAP_SUFFIX}"));
            if remap.is_file() {
                return Self::open_remapped(&remap);
            }
            for variant in ["", ".fp16"] {
                let single = dir.join(format!("{stem}{variant}.safetensors"));
                if single.is_file() {
                    return Self::open_file(&single);
                }
                let index = dir.join(format!("{stem}{variant}.safetensors.index.json"));
                if index.is_file() {
                    return Self::open(&shards_from_index(&index)?);
                }
            }
        }
        bail!("no weights in {}: expected {}.safetensors or a sharded .safetensors.index.json", dir.display(), stems[0])
    }

    /// A `__metadata__` string of the header (the first file that has it).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.shards.iter().find_map(|s| s.metadata.get(key)).map(String::as_str)
    }

    /// A one-value tensor (PyTorch's 0-dimensional ones: `logit_scale`, a LoRA's `alpha`).
    pub fn scalar(&self, name: &str) -> Result<f64> {
        let view = self.get(name).with_context(|| format!("no tensor {name}"))?;
        let values =
            view.to_data()?.convert::<f32>().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{name}: {e:?}"))?;
        anyhow::ensure!(values.len() == 1, "{name}: {} values, expected one", values.len());
        Ok(values[0] as f64)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        let e = self.entries.get(name)?;
        let shard = &self.shards[e.shard];
        let bytes = &shard.mmap[shard.data_start + e.range.0..shard.data_start + e.range.1];
        Some(TensorView {
            dtype: e.dtype,
            shape: e.shape.clone(),
            bytes,
            file: &shard.path,
            transposed: e.transposed,
            swapped: e.swapped,
        })
    }

    /// Drops the pages of tensor `name` from this process's resident memory once it has
    /// been converted, so that loading a model costs its final size plus one tensor, not
    /// plus the whole file. The data stays readable (the kernel re-reads it on access).
    pub fn release(&self, name: &str) {
        let Some(e) = self.entries.get(name) else { return };
        let shard = &self.shards[e.shard];
        if shard.anonymous {
            return;
        }
        #[cfg(unix)]
        // SAFETY: the mapping is a read-only file mapping: DONTNEED only discards cached
        // pages, which are faulted back in from the file if read again.
        unsafe {
            let _ = shard.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                shard.data_start + e.range.0,
                e.range.1 - e.range.0,
            );
        }
        #[cfg(not(unix))]
        let _ = shard;
    }

    pub fn describe(&self) -> String {
        match self.shards.as_slice() {
            [one] => one.path.display().to_string(),
            many => format!("{} shards starting with {}", many.len(), many[0].path.display()),
        }
    }

    fn require(&self, name: &str) -> Result<TensorView<'_>> {
        self.get(name).with_context(|| format!("{}: tensor {name:?} is missing", self.describe()))
    }

    /// A float tensor of rank `D`, converted to `dtype` on `device`.
    pub fn float<const D: usize>(&self, name: &str, device: &Device, dtype: DType) -> Result<Tensor<D>> {
        let view = self.require(name)?;
        if view.shape.len() != D {
            bail!("{}: tensor {name:?} has shape {:?}, expected rank {D}", view.file.display(), view.shape);
        }
        Ok(Tensor::from_data(view.to_data()?, (device, dtype)))
    }

    /// An integer tensor of rank `D` (i64 or i32 on disk; floats with integral values are
    /// accepted too, since some tools store timesteps as floats).
    pub fn int<const D: usize>(&self, name: &str, device: &Device) -> Result<Tensor<D, Int>> {
        let view = self.require(name)?;
        if view.shape.len() != D {
            bail!("{}: tensor {name:?} has shape {:?}, expected rank {D}", view.file.display(), view.shape);
        }
        let values: Vec<i64> = match view.dtype {
            Dtype::I64 => cast_bytes::<i64>(view.bytes),
            Dtype::I32 => cast_bytes::<i32>(view.bytes).into_iter().map(i64::from).collect(),
            Dtype::F32 | Dtype::F16 | Dtype::BF16 => {
                let data = view.to_data()?.convert::<f32>();
                data.try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?.into_iter().map(|v| v as i64).collect()
            }
            other => bail!("{}: tensor {name:?} has dtype {other:?}, expected i64", view.file.display()),
        };
        Ok(Tensor::from_data(TensorData::new(values, view.shape.clone()), device))
    }
}

impl TensorView<'_> {
    /// The tensor in its stored dtype, integers included (for copying tensors between files).
    /// A dtype that is neither integer nor float (bool, u8, ...) is an error naming the file.
    pub fn to_data_any(&self) -> Result<TensorData> {
        let shape = self.shape.clone();
        match self.dtype {
            Dtype::I64 => Ok(TensorData::new(cast_bytes::<i64>(self.bytes), shape)),
            Dtype::I32 => Ok(TensorData::new(cast_bytes::<i32>(self.bytes), shape)),
            _ => self.to_data(),
        }
    }

    /// The tensor in its stored dtype (f32, f16 or bf16); conversion happens on upload.
    pub fn to_data(&self) -> Result<TensorData> {
        let shape = self.shape.clone();
        // A transposed view is stored [cols, rows]: read in that order, then swapped.
        let t = self.transposed.then(|| (shape[1], shape[0]));
        let swap = self.swapped;
        Ok(match self.dtype {
            Dtype::F32 => TensorData::new(arrange(cast_bytes::<f32>(self.bytes), t, swap), shape),
            Dtype::F16 => TensorData::new(arrange(cast_bytes::<f16>(self.bytes), t, swap), shape),
            Dtype::BF16 => TensorData::new(arrange(cast_bytes::<bf16>(self.bytes), t, swap), shape),
            Dtype::F64 => {
                let v: Vec<f32> = cast_bytes::<f64>(self.bytes).into_iter().map(|v| v as f32).collect();
                TensorData::new(arrange(v, t, swap), shape)
            }
            other => bail!("{}: dtype {other:?} is not a float type", self.file.display()),
        })
    }
}

/// Values as a remapped view sees them: transposed (`rows_cols`), then with the halves of
/// the rows exchanged (`swap`).
fn arrange<T: Copy>(v: Vec<T>, rows_cols: Option<(usize, usize)>, swap: bool) -> Vec<T> {
    let mut v = transpose(v, rows_cols);
    if swap {
        let half = v.len() / 2;
        v.rotate_left(half);
    }
    v
}

/// A `rows × cols` row-major matrix transposed (unchanged without `rows_cols`).
pub(crate) fn transpose<T: Copy>(v: Vec<T>, rows_cols: Option<(usize, usize)>) -> Vec<T> {
    let Some((rows, cols)) = rows_cols else { return v };
    let mut out = Vec::with_capacity(v.len());
    for c in 0..cols {
        out.extend((0..rows).map(|r| v[r * cols + c]));
    }
    out
}

/// Little-endian bytes → values; the mmap is not necessarily aligned for `T`.
fn cast_bytes<T: bytemuck_like::Pod>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut out = Vec::<T>::with_capacity(n);
    // SAFETY: T is plain old data (sealed trait below); we copy exactly n * size_of::<T>()
    // bytes into freshly reserved, properly aligned storage.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr() as *mut u8, n * std::mem::size_of::<T>());
        out.set_len(n);
    }
    out
}

mod bytemuck_like {
    /// Types for which every bit pattern is a valid value.
    pub trait Pod: Copy {}
    impl Pod for f32 {}
    impl Pod for f64 {}
    impl Pod for i64 {}
    impl Pod for i32 {}
    impl Pod for burn::tensor::f16 {}
    impl Pod for burn::tensor::bf16 {}
}

fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let parsed: Index =
        serde_json::from_str(&text).with_context(|| format!("{}: no valid weight_map", index.display()))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = parsed.weight_map.values().map(|f| dir.join(f)).collect();
    files.sort();
    files.dedup();
    for f in &files {
        if !f.is_file() {
            bail!("{} lists shard {} which does not exist", index.display(), f.display());
        }
    }
    Ok(files)
}

/// A tensor to be written: its name, and a closure that produces its data only when the
/// writer reaches it, so that a multi-GB model is never held twice in memory.
pub struct PendingTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub data: Box<dyn FnOnce() -> TensorData + 'a>,
}

fn st_dtype(dtype: DType) -> Result<(&'static str, usize)> {
    Ok(match dtype {
        DType::F32 => ("F32", 4),
        DType::F16 => ("F16", 2),
        DType::BF16 => ("BF16", 2),
        DType::I64 => ("I64", 8),
        other => bail!("cannot write dtype {other:?} to safetensors"),
    })
}

/// Writes a safetensors file through a temporary file and a rename, so that an interrupted
/// write never leaves a truncated file under the final name.
pub fn write_safetensors(path: &Path, tensors: Vec<PendingTensor<'_>>) -> Result<()> {
    write_safetensors_with(path, tensors, &BTreeMap::new())
}

/// [`write_safetensors`] with more `__metadata__` strings beside `"format": "pt"`.
pub fn write_safetensors_with(
    path: &Path,
    tensors: Vec<PendingTensor<'_>>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "pt".into());
    for (k, v) in metadata {
        meta.insert(k.clone(), v.clone().into());
    }
    header.insert("__metadata__".into(), serde_json::Value::Object(meta));
    let mut offset = 0usize;
    let mut sorted = tensors;
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for t in &sorted {
        let (name, size) = st_dtype(t.dtype)?;
        let len = t.shape.iter().product::<usize>() * size;
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": name, "shape": t.shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut json = serde_json::to_vec(&header)?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let tmp = tmp_path(path)?;
    let result = (|| -> Result<()> {
        let mut w = BufWriter::new(File::create(&tmp)?);
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(&json)?;
        for t in sorted {
            let data = (t.data)();
            let expected = t.dtype;
            let data = if data.dtype() != expected { data.convert_dtype(expected) } else { data };
            // Layout is row-major either way; only the element count must agree.
            if data.num_elements() != t.shape.iter().product::<usize>() {
                bail!("tensor {}: {} values for shape {:?}", t.name, data.num_elements(), t.shape);
            }
            w.write_all(data.as_bytes())?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", path.display())));
    }
    rename_into_place(&tmp, path)
}

/// Writes tensors that are already computed (CLI outputs, fixtures) in f32 / i64.
pub fn write_tensors(path: &Path, tensors: Vec<(String, TensorData)>) -> Result<()> {
    let pending = tensors
        .into_iter()
        .map(|(name, data)| {
            // Integers stay i64 and bf16 stays bf16 (SD3 caches' text states); the rest is f32.
            let dtype = match data.dtype() {
                DType::I64 => DType::I64,
                DType::BF16 => DType::BF16,
                _ => DType::F32,
            };
            PendingTensor { name, shape: data.shape().to_vec(), dtype, data: Box::new(move || data) }
        })
        .collect();
    write_safetensors(path, pending)
}
