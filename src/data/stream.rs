//! The trainer's view of its pairs: a pairs file or a `mapo cache` folder, read in a
//! seeded order that any position of a run can recompute, streamed from disk a few shards
//! at a time so that memory does not depend on the dataset's size.
//!
//! Order of epoch e: the shards in a seeded permutation, cut into groups of
//! `shuffle_shards` consecutive shards (the shuffle buffer); each group's pairs in a seeded
//! permutation of their own. A run's position is one number, the cursor (pairs consumed
//! since step 0): epoch = cursor / len, and the group and row follow from the offset.
//! A background thread loads the next groups while the current one is consumed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use anyhow::{Context, Result, bail, ensure};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::cache::CacheIndex;
use crate::models::io::SafeTensorFiles;
use crate::models::unet::UNetConfig;
use crate::models::unet::inputs::{InputShapes, check_shapes};

/// Per-pair tensor shapes (without the row dimension).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairShape {
    /// [C, h, w] of one latent.
    pub latent: [usize; 3],
    /// [tokens, D] of the prompt's hidden states.
    pub context: [usize; 2],
    /// Length of the pooled text embedding.
    pub pooled: usize,
}

impl PairShape {
    pub fn latent_len(&self) -> usize {
        self.latent.iter().product()
    }
}

/// Some pairs' tensors on the host, row-major, f32; or unpaired images with their labels.
#[derive(Debug, Clone)]
pub struct PairRows {
    pub shape: PairShape,
    pub n: usize,
    /// Scaled latents (VAE mean × scaling factor for a cache); unpaired: the images.
    pub chosen: Vec<f32>,
    /// Empty for unpaired rows.
    pub rejected: Vec<f32>,
    /// Scaled standard deviations of the latent distributions (with `sample_latents`).
    pub spread: Option<(Vec<f32>, Vec<f32>)>,
    pub context: Vec<f32>,
    pub text_embeds: Vec<f32>,
    pub time_ids: Vec<f32>,
    /// Unpaired rows: whether each image is desirable.
    pub labels: Option<Vec<bool>>,
}

impl PairRows {
    fn empty(shape: PairShape, spread: bool, unpaired: bool) -> Self {
        Self {
            shape,
            n: 0,
            chosen: vec![],
            rejected: vec![],
            spread: spread.then(|| (vec![], vec![])),
            context: vec![],
            text_embeds: vec![],
            time_ids: vec![],
            labels: unpaired.then(Vec::new),
        }
    }

    /// Appends row `i` of `from`.
    pub fn push_row(&mut self, from: &PairRows, i: usize) {
        let (l, c, p) = (self.shape.latent_len(), self.shape.context[0] * self.shape.context[1], self.shape.pooled);
        let row = |k: usize| i * k..(i + 1) * k;
        self.chosen.extend_from_slice(&from.chosen[row(l)]);
        let paired = from.labels.is_none();
        if paired {
            self.rejected.extend_from_slice(&from.rejected[row(l)]);
        }
        if let (Some((a, b)), Some((fa, fb))) = (&mut self.spread, &from.spread) {
            a.extend_from_slice(&fa[row(l)]);
            if paired {
                b.extend_from_slice(&fb[row(l)]);
            }
        }
        if let (Some(to), Some(labels)) = (&mut self.labels, &from.labels) {
            to.push(labels[i]);
        }
        self.context.extend_from_slice(&from.context[row(c)]);
        self.text_embeds.extend_from_slice(&from.text_embeds[row(p)]);
        self.time_ids.extend_from_slice(&from.time_ids[row(6)]);
        self.n += 1;
    }

    /// Rows `start..start + len`.
    pub fn slice(&self, start: usize, len: usize) -> PairRows {
        let mut out = PairRows::empty(self.shape, self.spread.is_some(), self.labels.is_some());
        for i in start..start + len {
            out.push_row(self, i);
        }
        out
    }
}

/// Where a run is in its data, as recorded in checkpoints (the cursor is what resumes; the
/// rest says where that is, for people).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub cursor: usize,
    pub epoch: usize,
    /// The shard (file name; the pairs file's name for a pairs file) of the next pair.
    pub shard: String,
    /// The next pair's row in that shard.
    pub row: usize,
}

#[derive(Debug, Clone)]
struct ShardSpec {
    /// File name inside the cache (None: the pairs file, already on the host).
    file: Option<String>,
    pairs: usize,
}

#[derive(Debug, Clone)]
enum Origin {
    File {
        path: PathBuf,
        rows: Arc<PairRows>,
    },
    /// Latents as the denoiser sees them: (z − shift)·scale (SD3 and FLUX shift; SDXL not).
    Cache {
        dir: PathBuf,
        scale: f64,
        shift: Option<f64>,
    },
}

/// One epoch's groups: (first shard-order index, number of shards, first offset in the epoch).
struct Plan {
    order: Vec<usize>,
    groups: Vec<(usize, usize, usize)>,
}

/// A pairs file or a cache folder, opened and checked, with nothing but its index in memory
/// (a pairs file is held on the host: it is the small-data and test input).
#[derive(Debug, Clone)]
pub struct PairSource {
    origin: Origin,
    shards: Vec<ShardSpec>,
    pub shape: PairShape,
    pub len: usize,
    pub shuffle_shards: usize,
    pub seed: u64,
    /// Latents drawn per batch from the cached distributions (`sample_latents`).
    pub spread: bool,
    /// Rows of one image and a label each (Diffusion-KTO's data), not pairs.
    pub unpaired: bool,
}

/// The keys a pairs file or a cache shard stores its rows under.
#[derive(Debug, Clone, Copy)]
struct RowKeys {
    /// The chosen latents, or the unpaired images.
    first: &'static str,
    /// The rejected latents (None: unpaired rows).
    second: Option<&'static str>,
    /// The log-variances of `first` and `second` (caches).
    logvar: [Option<&'static str>; 2],
    /// Unpaired rows: 1 desirable, 0 undesirable.
    label: Option<&'static str>,
}

const CONDITIONING: [&str; 3] = ["encoder_hidden_states", "text_embeds", "time_ids"];

impl RowKeys {
    /// A pairs file (`chosen`, `rejected`; unpaired: `image`, `label`) or a cache shard
    /// (`chosen_mean`, `rejected_mean`, their log-variances; unpaired: `image_*`, `label`).
    /// Unpaired storage is recognised by its `label` tensor.
    fn of(f: &SafeTensorFiles, cache: bool) -> Self {
        let unpaired = f.shape("label").is_some();
        let logvar = |k: &'static str| cache.then_some(k);
        match (cache, unpaired) {
            (false, false) => Self { first: "chosen", second: Some("rejected"), logvar: [None, None], label: None },
            (false, true) => Self { first: "image", second: None, logvar: [None, None], label: Some("label") },
            (true, false) => Self {
                first: "chosen_mean",
                second: Some("rejected_mean"),
                logvar: [logvar("chosen_logvar"), logvar("rejected_logvar")],
                label: None,
            },
            (true, true) => {
                Self { first: "image_mean", second: None, logvar: [logvar("image_logvar"), None], label: Some("label") }
            }
        }
    }

    /// The keys that hold one row per pair (or image).
    fn all(&self) -> Vec<&'static str> {
        let mut keys = vec![self.first];
        keys.extend(self.second);
        keys.extend(self.label);
        keys.extend(CONDITIONING);
        keys
    }
}

impl PairSource {
    /// A pairs file, or a `mapo cache` folder (latents = VAE mean × scaling factor; with
    /// `sample_latents`, drawn from the VAE's distribution in every batch).
    pub fn open(path: &Path, seed: u64, shuffle_shards: usize, sample_latents: bool) -> Result<Self> {
        ensure!(shuffle_shards >= 1, "shuffle_shards must be at least 1");
        if path.is_dir() {
            return Self::open_cache(path, seed, shuffle_shards, sample_latents);
        }
        if sample_latents {
            bail!("{}: sample_latents needs a `mapo cache` folder (a pairs file holds latents only)", path.display());
        }
        let f = SafeTensorFiles::open_file(path)?;
        let keys = RowKeys::of(&f, false);
        let shape = shape_of(&f, &keys, path)?;
        let n = rows_of(&f, &keys, path)?;
        ensure!(n > 0, "{}: no pairs", path.display());
        let rows = read_rows(&f, &keys, shape, n, (1.0, None), false, path)?;
        Ok(Self {
            origin: Origin::File { path: path.to_path_buf(), rows: Arc::new(rows) },
            shards: vec![ShardSpec { file: None, pairs: n }],
            shape,
            len: n,
            shuffle_shards,
            seed,
            spread: false,
            unpaired: keys.label.is_some(),
        })
    }

    fn open_cache(dir: &Path, seed: u64, shuffle_shards: usize, sample_latents: bool) -> Result<Self> {
        let index = CacheIndex::read(dir)?;
        if !index.complete {
            bail!(
                "{}: the cache is incomplete ({} pairs so far); finish it with `mapo cache` first",
                dir.display(),
                index.pairs()
            );
        }
        ensure!(!index.shards.is_empty() && index.pairs() > 0, "{}: the cache holds no pairs", dir.display());
        // Every shard is checked from its header before training starts: a shard that
        // disagrees with the index or with the others would otherwise fail mid-run.
        let mut shape = None;
        let unpaired = index.meta.read.unpaired;
        for s in &index.shards {
            let path = dir.join(&s.file);
            let f = SafeTensorFiles::open_file(&path)?;
            let keys = RowKeys::of(&f, true);
            ensure!(
                keys.label.is_some() == unpaired,
                "{}: {} rows, but the cache's index.json says {} (the cache was changed after it was made?)",
                path.display(),
                if unpaired { "paired" } else { "unpaired" },
                if unpaired { "unpaired" } else { "paired" }
            );
            let here = shape_of(&f, &keys, &path)?;
            let rows = rows_of(&f, &keys, &path)?;
            ensure!(
                rows == s.pairs,
                "{}: holds {rows} pairs, the cache's index.json says {} (the cache was changed after it was made?)",
                path.display(),
                s.pairs
            );
            if sample_latents {
                for k in keys.logvar.into_iter().flatten() {
                    let want = [&[rows][..], &here.latent[..]].concat();
                    ensure!(
                        f.shape(k) == Some(&want[..]),
                        "{}: {k} is {:?}, expected {want:?} (sample_latents needs the VAE's log-variances)",
                        path.display(),
                        f.shape(k)
                    );
                }
            }
            match shape {
                None => shape = Some(here),
                Some(first) if first != here => bail!(
                    "{}: pairs of shape {here:?}, the first shard {} has {first:?}",
                    path.display(),
                    index.shards[0].file
                ),
                Some(_) => {}
            }
        }
        let shape = shape.expect("at least one shard");
        let factor = vae_factor(&index.meta.vae_config);
        let expect = index.meta.resolution / factor;
        ensure!(
            shape.latent[1] == expect && shape.latent[2] == expect,
            "{}: shard {} holds {}x{} latents, but index.json says resolution {} (latents {expect}x{expect} for a VAE \
             that downsamples {factor}x)",
            dir.display(),
            index.shards[0].file,
            shape.latent[1],
            shape.latent[2],
            index.meta.resolution
        );
        Ok(Self {
            origin: Origin::Cache {
                dir: dir.to_path_buf(),
                scale: index.meta.scaling_factor,
                shift: index.meta.shift_factor,
            },
            shards: index.shards.iter().map(|s| ShardSpec { file: Some(s.file.clone()), pairs: s.pairs }).collect(),
            shape,
            len: index.pairs(),
            shuffle_shards,
            seed,
            spread: sample_latents,
            unpaired,
        })
    }

    /// The pairs' shapes against the UNet they will train (a pairs file or cache made for
    /// another model would otherwise fail deep inside the first step).
    pub fn check_model(&self, source: &Path, config: &UNetConfig) -> Result<()> {
        let n = self.len;
        let s = self.shape;
        let shapes = InputShapes {
            sample: &[n, s.latent[0], s.latent[1], s.latent[2]],
            timestep: &[n],
            encoder_hidden_states: &[n, s.context[0], s.context[1]],
            text_embeds: Some(&[n, s.pooled]),
            time_ids: Some(&[n, 6]),
        };
        check_shapes(config, &shapes).with_context(|| {
            format!("{}: the pairs do not fit the model's UNet (made for another model?)", source.display())
        })
    }

    /// A cache must have been encoded by the VAE of the model it trains (other latents
    /// would train the UNet on another model's latent space without any shape error).
    pub fn check_vae(&self, vae_config: &serde_json::Value) -> Result<()> {
        let Origin::Cache { dir, .. } = &self.origin else { return Ok(()) };
        let index = CacheIndex::read(dir)?;
        let keys = ["scaling_factor", "shift_factor", "block_out_channels", "latent_channels", "in_channels"];
        for k in keys {
            let (a, b) = (index.meta.vae_config.get(k), vae_config.get(k));
            ensure!(
                a == b,
                "{}: the cache was made with another VAE ({k} {} in index.json, {} in the model's vae/config.json): \
                 made for another model? Rebuild it with `mapo cache --model ...`",
                dir.display(),
                a.map_or("(unset)".into(), |v| v.to_string()),
                b.map_or("(unset)".into(), |v| v.to_string())
            );
        }
        Ok(())
    }

    /// The first `k` pairs in storage order (validation prompts).
    pub fn first(&self, k: usize) -> Result<PairRows> {
        let k = k.min(self.len);
        let mut out = PairRows::empty(self.shape, false, self.unpaired);
        for s in 0..self.shards.len() {
            if out.n >= k {
                break;
            }
            let rows = self.load_shard(s, false)?;
            for i in 0..rows.n.min(k - out.n) {
                out.push_row(&rows, i);
            }
        }
        Ok(out)
    }

    fn plan(&self, epoch: usize) -> Plan {
        let mut order: Vec<usize> = (0..self.shards.len()).collect();
        if order.len() > 1 {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(
                self.seed ^ 0xD1B5_4A32_D192_ED03 ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ));
        }
        let mut groups = Vec::new();
        let mut offset = 0;
        for (g, chunk) in order.chunks(self.shuffle_shards).enumerate() {
            groups.push((g * self.shuffle_shards, chunk.len(), offset));
            offset += chunk.iter().map(|&s| self.shards[s].pairs).sum::<usize>();
        }
        Plan { order, groups }
    }

    /// The group's pairs in their shuffled order: `perm[j]` is the j-th pair, counted in
    /// the group's shard order. Group 0 of a one-shard source is the old whole-file order.
    fn group_perm(&self, epoch: usize, group: usize, len: usize) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..len).collect();
        perm.shuffle(&mut ChaCha8Rng::seed_from_u64(
            self.seed
                ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (group as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
        ));
        perm
    }

    /// Where `cursor` is (see [`Position`]).
    pub fn position(&self, cursor: usize) -> Position {
        let (epoch, offset) = (cursor / self.len, cursor % self.len);
        let plan = self.plan(epoch);
        let g = plan.groups.iter().rposition(|(_, _, start)| *start <= offset).expect("offset 0 is in group 0");
        let (first, count, start) = plan.groups[g];
        let shards = &plan.order[first..first + count];
        let total = shards.iter().map(|&s| self.shards[s].pairs).sum();
        let mut j = self.group_perm(epoch, g, total)[offset - start];
        for &s in shards {
            if j < self.shards[s].pairs {
                return Position { cursor, epoch, shard: self.shard_name(s), row: j };
            }
            j -= self.shards[s].pairs;
        }
        unreachable!("the permutation stays within its group")
    }

    fn shard_name(&self, s: usize) -> String {
        match (&self.shards[s].file, &self.origin) {
            (Some(f), _) => f.clone(),
            (None, Origin::File { path, .. }) => path.display().to_string(),
            (None, Origin::Cache { .. }) => unreachable!("cache shards have names"),
        }
    }

    fn load_shard(&self, s: usize, spread: bool) -> Result<PairRows> {
        match (&self.origin, &self.shards[s].file) {
            (Origin::File { rows, .. }, _) => Ok(rows.as_ref().clone()),
            (Origin::Cache { dir, scale, shift }, Some(file)) => {
                let path = dir.join(file);
                let f = SafeTensorFiles::open_file(&path)?;
                let affine = (*scale, *shift);
                read_rows(&f, &RowKeys::of(&f, true), self.shape, self.shards[s].pairs, affine, spread, &path)
            }
            (Origin::Cache { .. }, None) => unreachable!("cache shards have names"),
        }
    }

    /// One group of an epoch, loaded and in its shuffled order (rows are copied once, from
    /// the shards into the order, so the group is held at most twice while it is built).
    fn load_group(&self, plan: &Plan, epoch: usize, g: usize) -> Result<PairRows> {
        let (first, count, _) = plan.groups[g];
        let shards: Vec<PairRows> =
            plan.order[first..first + count].iter().map(|&s| self.load_shard(s, self.spread)).collect::<Result<_>>()?;
        let total = shards.iter().map(|r| r.n).sum();
        let mut out = PairRows::empty(self.shape, self.spread, self.unpaired);
        for mut j in self.group_perm(epoch, g, total) {
            let mut k = 0;
            while j >= shards[k].n {
                j -= shards[k].n;
                k += 1;
            }
            out.push_row(&shards[k], j);
        }
        Ok(out)
    }

    /// The pairs from `cursor` on, read ahead by a background thread holding at most
    /// `ahead` groups beyond the one being consumed.
    pub fn stream(&self, cursor: usize, ahead: usize) -> PairStream {
        let (tx, rx) = sync_channel(ahead.max(1));
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name("mapo-data".into())
            .spawn(move || me.read_ahead(cursor, tx))
            .expect("spawning the data reader thread");
        PairStream { rx, current: None, cursor, _reader: handle }
    }

    fn read_ahead(&self, cursor: usize, tx: SyncSender<Result<Loaded>>) {
        let (mut epoch, offset) = (cursor / self.len, cursor % self.len);
        let mut plan = self.plan(epoch);
        let mut g = plan.groups.iter().rposition(|(_, _, start)| *start <= offset).expect("group 0 starts at 0");
        loop {
            let start = epoch * self.len + plan.groups[g].2;
            let loaded = self.load_group(&plan, epoch, g).map(|rows| Loaded { start, rows });
            let failed = loaded.is_err();
            if tx.send(loaded).is_err() || failed {
                return; // the trainer is done with the data (or it cannot be read)
            }
            g += 1;
            if g == plan.groups.len() {
                (epoch, g) = (epoch + 1, 0);
                plan = self.plan(epoch);
            }
        }
    }
}

struct Loaded {
    /// Cursor of the group's first pair.
    start: usize,
    rows: PairRows,
}

/// Pairs in run order from some cursor on.
pub struct PairStream {
    rx: Receiver<Result<Loaded>>,
    current: Option<Loaded>,
    cursor: usize,
    _reader: std::thread::JoinHandle<()>,
}

impl PairStream {
    /// The next `n` pairs and their cursors (their global sample indices).
    pub fn next(&mut self, n: usize) -> Result<(PairRows, Vec<usize>)> {
        let mut out: Option<PairRows> = None;
        let cursors: Vec<usize> = (self.cursor..self.cursor + n).collect();
        for &c in &cursors {
            while self.current.as_ref().is_none_or(|g| c >= g.start + g.rows.n) {
                let next = self.rx.recv().context("the data reader thread stopped")??;
                self.current = Some(next);
            }
            let g = self.current.as_ref().expect("loaded above");
            out.get_or_insert_with(|| PairRows::empty(g.rows.shape, g.rows.spread.is_some(), g.rows.labels.is_some()))
                .push_row(&g.rows, c - g.start);
        }
        self.cursor += n;
        Ok((out.expect("n > 0"), cursors))
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }
}

/// Rows of the first key, the same in every key (checked from the header).
fn rows_of(f: &SafeTensorFiles, keys: &RowKeys, path: &Path) -> Result<usize> {
    let n = f.shape(keys.first).with_context(|| format!("{}: no tensor {}", path.display(), keys.first))?[0];
    for k in &keys.all()[1..] {
        let shape = f.shape(k).with_context(|| format!("{}: no tensor {k}", path.display()))?;
        ensure!(
            shape.first() == Some(&n),
            "{}: {k} has {:?} rows, {} has {n}",
            path.display(),
            shape.first(),
            keys.first
        );
    }
    if let Some(k) = keys.label {
        let shape = f.shape(k).expect("checked above");
        ensure!(shape.len() == 1, "{}: {k} has shape {shape:?}, expected [{n}] (one label per image)", path.display());
    }
    Ok(n)
}

fn shape_of(f: &SafeTensorFiles, keys: &RowKeys, path: &Path) -> Result<PairShape> {
    let get = |k: &str, rank: usize| -> Result<Vec<usize>> {
        let s = f.shape(k).with_context(|| format!("{}: no tensor {k}", path.display()))?;
        ensure!(s.len() == rank, "{}: {k} has shape {s:?}, expected {rank} dimensions", path.display());
        Ok(s[1..].to_vec())
    };
    let w = get(keys.first, 4)?;
    if let Some(second) = keys.second {
        let l = get(second, 4)?;
        ensure!(w == l, "{}: {} {w:?} and {second} {l:?} differ in shape", path.display(), keys.first);
    }
    let [context, pooled, time_ids] = CONDITIONING;
    let c = get(context, 3)?;
    let p = get(pooled, 2)?;
    let t = get(time_ids, 2)?;
    ensure!(t == [6], "{}: {time_ids} has {t:?} values per pair, expected 6", path.display());
    Ok(PairShape { latent: [w[0], w[1], w[2]], context: [c[0], c[1]], pooled: p[0] })
}

fn read_rows(
    f: &SafeTensorFiles,
    keys: &RowKeys,
    shape: PairShape,
    n: usize,
    (scale, shift): (f64, Option<f64>),
    spread: bool,
    path: &Path,
) -> Result<PairRows> {
    let read = |k: &str| -> Result<Vec<f32>> {
        let v = f.get(k).with_context(|| format!("{}: no tensor {k}", path.display()))?;
        v.to_data()?
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{}: {k}: {e:?}", path.display()))
    };
    let scaled = |k: &str| -> Result<Vec<f32>> {
        let mut v = read(k)?;
        if let Some(shift) = shift {
            v.iter_mut().for_each(|x| *x -= shift as f32);
        }
        if scale != 1.0 {
            // In f32, as the device computes it.
            v.iter_mut().for_each(|x| *x *= scale as f32);
        }
        Ok(v)
    };
    let sd = |k: Option<&str>| -> Result<Vec<f32>> {
        match k {
            Some(k) => Ok(read(k)?.into_iter().map(|lv| (lv * 0.5).exp() * scale as f32).collect()),
            None => Ok(Vec::new()),
        }
    };
    let labels = match keys.label {
        Some(k) => {
            // Labels are stored as integers (i64); read them whatever their dtype.
            let v = f.get(k).with_context(|| format!("{}: no tensor {k}", path.display()))?;
            let values = v
                .to_data_any()
                .with_context(|| format!("{}: {k}", path.display()))?
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{}: {k}: {e:?}", path.display()))?;
            if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| **v != 0.0 && **v != 1.0) {
                bail!("{}: {k}[{i}] is {v}; labels must be 1 (desirable) or 0 (undesirable)", path.display());
            }
            Some(values.into_iter().map(|v| v == 1.0).collect())
        }
        None => None,
    };
    let [context, pooled, time_ids] = CONDITIONING;
    let rows = PairRows {
        shape,
        n,
        chosen: scaled(keys.first)?,
        rejected: keys.second.map(scaled).transpose()?.unwrap_or_default(),
        spread: if spread { Some((sd(keys.logvar[0])?, sd(keys.logvar[1])?)) } else { None },
        context: read(context)?,
        text_embeds: read(pooled)?,
        time_ids: read(time_ids)?,
        labels,
    };
    Ok(rows)
}

/// How much the VAE downsamples: 2^(levels − 1).
fn vae_factor(vae_config: &serde_json::Value) -> usize {
    let levels = vae_config.get("block_out_channels").and_then(|v| v.as_array()).map_or(4, |a| a.len());
    1 << levels.saturating_sub(1)
}
