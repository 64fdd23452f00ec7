//! Pick-a-Pic-format preference pairs from local parquet files (Pick-a-Pic v2, and the
//! MaPO sets Pick-Style and Pick-Safety): `caption`, `jpg_0`, `jpg_1`, `label_0`,
//! `label_1`; the chosen image is the one whose label is 1. With `unpaired`, rows of one
//! image each (`caption`, `image`, `label`: 1 desirable, 0 undesirable), as Diffusion-KTO
//! trains on.
//!
//! Files are streamed row group by row group through parquet's page reader, so a split of
//! hundreds of GB is never loaded whole. The order is deterministic for a seed: row
//! groups are visited in a seeded permutation and rows pass through a seeded shuffle
//! buffer.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Column names, for preference sets that name them differently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Columns {
    pub caption: String,
    pub image_0: String,
    pub image_1: String,
    pub label_0: String,
    pub label_1: String,
    /// Unpaired rows: the image and its binary label.
    pub image: String,
    pub label: String,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            caption: "caption".into(),
            image_0: "jpg_0".into(),
            image_1: "jpg_1".into(),
            label_0: "label_0".into(),
            label_1: "label_1".into(),
            image: "image".into(),
            label: "label".into(),
        }
    }
}

impl Columns {
    /// The columns read for pair rows, or for unpaired rows.
    fn names(&self, unpaired: bool) -> Vec<&str> {
        if unpaired {
            vec![&self.caption, &self.image, &self.label]
        } else {
            vec![&self.caption, &self.image_0, &self.image_1, &self.label_0, &self.label_1]
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadOptions {
    pub columns: Columns,
    /// Keep 0.5/0.5 ties (chosen = image 0); dropped by default.
    pub keep_ties: bool,
    /// Stop after this many pairs.
    pub max_samples: Option<usize>,
    /// Shuffle (row groups in a seeded order, rows through a seeded buffer); `None` keeps
    /// file order.
    pub shuffle_seed: Option<u64>,
    pub shuffle_buffer: usize,
    /// Rows of one image and a binary label (columns `image`, `label`) instead of pairs.
    pub unpaired: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            columns: Columns::default(),
            keep_ties: false,
            max_samples: None,
            shuffle_seed: None,
            shuffle_buffer: 256,
            unpaired: false,
        }
    }
}

/// One preference pair, images still encoded; or one unpaired image and its label.
#[derive(Debug, Clone)]
pub struct Pair {
    pub file: PathBuf,
    /// Row index within the file.
    pub row: usize,
    pub caption: String,
    /// The chosen image (unpaired: the row's image).
    pub chosen: Vec<u8>,
    /// The rejected image (unpaired: empty).
    pub rejected: Vec<u8>,
    /// Unpaired rows only: whether the image is desirable.
    pub label: Option<bool>,
}

/// Rows left out, by reason (each also printed as a warning naming file and row).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub ties: usize,
    pub not_a_preference: usize,
    pub missing_value: usize,
    pub bad_image: usize,
}

impl Skipped {
    pub fn total(&self) -> usize {
        self.ties + self.not_a_preference + self.missing_value + self.bad_image
    }
}

/// `pattern`: a parquet file, a folder (its `*.parquet`), or a file name with `*`
/// wildcards (`data/train-*.parquet`). Sorted, so the order does not depend on the
/// file system.
pub fn expand(pattern: &Path) -> Result<Vec<PathBuf>> {
    let text = pattern.to_string_lossy();
    let files: Vec<PathBuf> = if pattern.is_dir() {
        list(pattern, |name| name.ends_with(".parquet"))?
    } else if text.contains('*') {
        let parent = pattern.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let glob = pattern.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        list(parent, |name| wildcard(&glob, name))?
    } else if pattern.is_file() {
        vec![pattern.to_path_buf()]
    } else {
        bail!("{}: no such file or folder", pattern.display());
    };
    if files.is_empty() {
        bail!("{}: matches no parquet file", pattern.display());
    }
    Ok(files)
}

fn list(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| keep(&n.to_string_lossy())))
        .collect();
    out.sort();
    Ok(out)
}

/// `*` matches any run of characters (no other wildcard).
fn wildcard(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else { return false };
            rest = &rest[at + part.len()..];
        }
    }
    rest.is_empty()
}

struct Unit {
    file: usize,
    group: usize,
    /// Index of the group's first row within the file.
    first_row: usize,
    rows: usize,
}

/// A streaming reader over one or more parquet files.
pub struct PairReader {
    files: Vec<PathBuf>,
    units: Vec<Unit>,
    options: ReadOptions,
}

impl PairReader {
    /// Opens every file's metadata (not its data) and checks the columns.
    pub fn open(pattern: &Path, options: ReadOptions) -> Result<Self> {
        let files = expand(pattern)?;
        let mut units = Vec::new();
        for (fi, path) in files.iter().enumerate() {
            let reader = open_file(path)?;
            let schema = reader.metadata().file_metadata().schema_descr();
            let have: Vec<&str> = schema.root_schema().get_fields().iter().map(|f| f.name()).collect();
            for want in options.columns.names(options.unpaired) {
                if !have.contains(&want) {
                    bail!("{}: no column {want:?} (columns: {})", path.display(), have.join(", "));
                }
            }
            let mut first_row = 0;
            for g in 0..reader.num_row_groups() {
                let rows = reader.metadata().row_group(g).num_rows() as usize;
                units.push(Unit { file: fi, group: g, first_row, rows });
                first_row += rows;
            }
        }
        if let Some(seed) = options.shuffle_seed {
            units.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        Ok(Self { files, units, options })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Rows in all files (from the metadata): an upper bound on the pairs, for progress bars.
    pub fn total_rows(&self) -> usize {
        self.units.iter().map(|u| u.rows).sum()
    }

    /// Calls `each` with every kept pair, in the reader's order, until it returns false
    /// or `max_samples` is reached; returns the skipped rows' counts.
    pub fn for_each(&self, mut each: impl FnMut(Pair) -> Result<bool>) -> Result<Skipped> {
        let mut skipped = Skipped::default();
        let mut sent = 0usize;
        let limit = self.options.max_samples.unwrap_or(usize::MAX);
        let mut rng = self.options.shuffle_seed.map(|s| ChaCha8Rng::seed_from_u64(s ^ 0x5851_F42D_4C95_7F2D));
        let cap = if rng.is_some() { self.options.shuffle_buffer.max(1) } else { 1 };
        let mut buffer: VecDeque<Pair> = VecDeque::new();
        let mut emit = |p: Pair, sent: &mut usize| -> Result<bool> {
            *sent += 1;
            Ok(each(p)? && *sent < limit)
        };
        for unit in &self.units {
            let path = &self.files[unit.file];
            let reader = open_file(path)?;
            let group = reader
                .get_row_group(unit.group)
                .with_context(|| format!("{}: row group {}", path.display(), unit.group))?;
            let projection = projection(&reader, &self.options.columns, self.options.unpaired)?;
            let rows = group
                .get_row_iter(Some(projection))
                .with_context(|| format!("{}: reading row group {}", path.display(), unit.group))?;
            for (i, row) in rows.enumerate() {
                let at = unit.first_row + i;
                let row = match row {
                    Ok(r) => r,
                    Err(e) => {
                        // A truncated or corrupt page: the rest of this row group is unreadable.
                        eprintln!(
                            "warning: {} row {at}: {e}; skipping the rest of row group {}",
                            path.display(),
                            unit.group
                        );
                        skipped.missing_value += 1;
                        break;
                    }
                };
                let Some(pair) = self.pair(path, at, &row, &mut skipped) else { continue };
                match rng.as_mut() {
                    None => {
                        if !emit(pair, &mut sent)? {
                            return Ok(skipped);
                        }
                    }
                    Some(rng) => {
                        buffer.push_back(pair);
                        if buffer.len() >= cap {
                            let pick = rng.random_range(0..buffer.len());
                            let out = buffer.swap_remove_back(pick).expect("non-empty");
                            if !emit(out, &mut sent)? {
                                return Ok(skipped);
                            }
                        }
                    }
                }
            }
        }
        while let Some(rng) = rng.as_mut() {
            if buffer.is_empty() {
                break;
            }
            let pick = rng.random_range(0..buffer.len());
            let out = buffer.swap_remove_back(pick).expect("non-empty");
            if !emit(out, &mut sent)? {
                break;
            }
        }
        Ok(skipped)
    }

    /// The pair in `row`, or None (counted and warned) when the row is not a usable pair.
    fn pair(&self, path: &Path, at: usize, row: &Row, skipped: &mut Skipped) -> Option<Pair> {
        let c = &self.options.columns;
        let get = |name: &str| row.get_column_iter().find(|(n, _)| n.as_str() == name).map(|(_, f)| f);
        let warn = |what: String| eprintln!("warning: {} row {at}: {what}; skipped", path.display());
        if self.options.unpaired {
            let (caption, image, label) =
                (get(&c.caption).and_then(text), get(&c.image).and_then(bytes), get(&c.label).and_then(number));
            let (Some(caption), Some(image), Some(label)) = (caption, image, label) else {
                warn("a missing or mistyped value".into());
                skipped.missing_value += 1;
                return None;
            };
            if label != 0.0 && label != 1.0 {
                warn(format!("label {label} is not 1 (desirable) or 0 (undesirable)"));
                skipped.not_a_preference += 1;
                return None;
            }
            let (file, row) = (path.to_path_buf(), at);
            return Some(Pair { file, row, caption, chosen: image, rejected: Vec::new(), label: Some(label == 1.0) });
        }
        let (caption, img0, img1) =
            (get(&c.caption).and_then(text), get(&c.image_0).and_then(bytes), get(&c.image_1).and_then(bytes));
        let (l0, l1) = (get(&c.label_0).and_then(number), get(&c.label_1).and_then(number));
        let (Some(caption), Some(img0), Some(img1), Some(l0), Some(l1)) = (caption, img0, img1, l0, l1) else {
            warn("a missing or mistyped value".into());
            skipped.missing_value += 1;
            return None;
        };
        let chosen_first = match (l0, l1) {
            (a, b) if a == 1.0 && b == 0.0 => true,
            (a, b) if a == 0.0 && b == 1.0 => false,
            (a, b) if a == 0.5 && b == 0.5 => {
                if !self.options.keep_ties {
                    skipped.ties += 1;
                    return None;
                }
                true
            }
            (a, b) => {
                warn(format!("labels {a}/{b} are not a preference"));
                skipped.not_a_preference += 1;
                return None;
            }
        };
        let (chosen, rejected) = if chosen_first { (img0, img1) } else { (img1, img0) };
        Some(Pair { file: path.to_path_buf(), row: at, caption, chosen, rejected, label: None })
    }
}

/// Every value of one text column, in file and row order (a prompt suite from a split's
/// `caption` column); rows where it is null or not text are counted, not returned.
pub fn read_text_column(pattern: &Path, column: &str) -> Result<(Vec<String>, usize)> {
    let (mut out, mut skipped) = (Vec::new(), 0);
    for path in expand(pattern)? {
        let reader = open_file(&path)?;
        let root = reader.metadata().file_metadata().schema_descr().root_schema();
        let Some(field) = root.get_fields().iter().find(|f| f.name() == column).cloned() else {
            let have: Vec<&str> = root.get_fields().iter().map(|f| f.name()).collect();
            bail!("{}: no column {column:?} (columns: {})", path.display(), have.join(", "));
        };
        let projection = Type::group_type_builder(root.name()).with_fields(vec![field]).build()?;
        for g in 0..reader.num_row_groups() {
            let group = reader.get_row_group(g).with_context(|| format!("{}: row group {g}", path.display()))?;
            let rows = group
                .get_row_iter(Some(projection.clone()))
                .with_context(|| format!("{}: reading row group {g}", path.display()))?;
            for row in rows {
                let row = row.with_context(|| format!("{}: reading row group {g}", path.display()))?;
                match row.get_column_iter().next().and_then(|(_, f)| text(f)) {
                    Some(t) => out.push(t),
                    None => skipped += 1,
                }
            }
        }
    }
    Ok((out, skipped))
}

fn open_file(path: &Path) -> Result<SerializedFileReader<std::fs::File>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    SerializedFileReader::new(f).with_context(|| format!("{}: not a readable parquet file", path.display()))
}

fn projection(reader: &SerializedFileReader<std::fs::File>, columns: &Columns, unpaired: bool) -> Result<Type> {
    let root = reader.metadata().file_metadata().schema_descr().root_schema();
    let names = columns.names(unpaired);
    let fields = root.get_fields().iter().filter(|f| names.contains(&f.name())).cloned().collect();
    Ok(Type::group_type_builder(root.name()).with_fields(fields).build()?)
}

fn text(f: &Field) -> Option<String> {
    match f {
        Field::Str(s) => Some(s.clone()),
        Field::Bytes(b) => std::str::from_utf8(b.data()).ok().map(String::from),
        _ => None,
    }
}

/// Raw bytes, or Hugging Face's image struct `{bytes, path}`.
fn bytes(f: &Field) -> Option<Vec<u8>> {
    match f {
        Field::Bytes(b) => Some(b.data().to_vec()),
        Field::Group(row) => row.get_column_iter().find(|(n, _)| n.as_str() == "bytes").and_then(|(_, f)| bytes(f)),
        _ => None,
    }
}

fn number(f: &Field) -> Option<f64> {
    match f {
        Field::Double(v) => Some(*v),
        Field::Float(v) => Some(*v as f64),
        Field::Int(v) => Some(*v as f64),
        Field::Long(v) => Some(*v as f64),
        Field::Short(v) => Some(*v as f64),
        Field::Byte(v) => Some(*v as f64),
        Field::Bool(v) => Some(if *v { 1.0 } else { 0.0 }),
        _ => None,
    }
}
