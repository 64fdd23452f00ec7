//! `mapo cache`: encodes every pair once (the VAE's latent distribution of both images,
//! and the prompt embeddings of both text encoders) into sharded safetensors with an
//! index, so training reads tensors instead of decoding JPEGs and running three encoders.
//!
//! `<out>/index.json` records what made the cache (model, resolution, transforms, reader
//! options) and the shards written so far; an interrupted run resumes after the last
//! shard, and a cache made with other settings is refused, never mixed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::loader::{LoaderConfig, for_each_prepared};
use super::parquet::{PairReader, ReadOptions, Skipped};
use super::transform::{Prepared, TransformConfig};
use crate::models::flux::FluxTransformerConfig;
use crate::models::folder::component_dir;
use crate::models::io::{write_atomic, write_tensors};
use crate::models::sd3::SD3TransformerConfig;
use crate::models::vae::{AutoencoderKL, VaeConfig};
use crate::sample::flux::FluxPromptEncoder;
use crate::sample::pipeline::PromptEncoder;
use crate::sample::sd3::Sd3PromptEncoder;

/// What a cache was made with; a rerun must match it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheMeta {
    pub version: u32,
    pub model: PathBuf,
    pub vae_config: serde_json::Value,
    pub scaling_factor: f64,
    /// SD3's and FLUX's latent shift (training latents are (z − shift)·scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift_factor: Option<f64>,
    pub resolution: usize,
    pub transform: TransformConfig,
    pub read: ReadOptions,
    pub seed: u64,
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shard {
    pub file: String,
    pub pairs: usize,
    /// Stream position after this shard's last pair (where a resumed run continues).
    pub end_position: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheIndex {
    pub meta: CacheMeta,
    pub shards: Vec<Shard>,
    /// Stream position (kept pairs, in reader order) after the last shard.
    pub next_position: usize,
    pub skipped: Skipped,
    pub complete: bool,
}

impl CacheIndex {
    pub fn pairs(&self) -> usize {
        self.shards.iter().map(|s| s.pairs).sum()
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("index.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let index: Self =
            serde_json::from_str(&text).with_context(|| format!("{} is not a mapo cache index", path.display()))?;
        // Shards are plain file names inside the cache: a path would read outside it.
        for shard in &index.shards {
            let plain = std::path::Path::new(&shard.file).file_name().is_some_and(|n| n == shard.file.as_str());
            anyhow::ensure!(
                plain && !shard.file.starts_with('.'),
                "{}: shard name {:?} is not a file name inside the cache",
                path.display(),
                shard.file
            );
        }
        Ok(index)
    }
}

#[derive(Debug, Clone)]
pub struct CacheArgs {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub transform: TransformConfig,
    pub read: ReadOptions,
    pub seed: u64,
    pub shard_size: usize,
    /// Pairs per VAE call.
    pub batch: usize,
    pub workers: usize,
    pub device: Option<String>,
    /// SD3 / FLUX: T5 tokens per caption (None: the pipeline's default, 256 / 512).
    pub max_sequence_length: Option<usize>,
}

struct Encoders {
    vae: AutoencoderKL,
    prompts: Prompts,
    device: Device,
}

/// The family's text encoders.
enum Prompts {
    Sdxl(Box<PromptEncoder>),
    /// SD3: both CLIPs and T5; the per-token states are stored in bf16 (T5's 256 tokens ×
    /// 4096 would make each row 5.5 MB in f32).
    Sd3(Box<Sd3PromptEncoder>),
    /// FLUX: CLIP L's pooled output and T5's states (bf16, 512 tokens by default: 4 MB a
    /// row), so that T5 is never loaded while training.
    Flux(Box<FluxPromptEncoder>),
}

impl Prompts {
    fn load(model: &Path, max_sequence_length: Option<usize>, device: &Device) -> Result<Self> {
        // The denoiser folder says the family (the data layer sits below `family`): a
        // `transformer/` is FLUX's when its config names FluxTransformer2DModel, else SD3's.
        let folder = crate::models::folder::model_folder(model)?;
        if !folder.join("transformer").join("config.json").is_file() {
            return Ok(Self::Sdxl(Box::new(PromptEncoder::load(model, device, DType::F32)?)));
        }
        let dir = component_dir(model, "transformer")?;
        let (raw, _) = crate::models::config::read_config::<serde_json::Value>(&dir)?;
        Ok(if raw["_class_name"] == "FluxTransformer2DModel" {
            let c: FluxTransformerConfig = serde_json::from_value(raw)
                .with_context(|| format!("{}: not a FLUX transformer config", dir.display()))?;
            let (joint, pooled) = (c.joint_attention_dim, c.pooled_projection_dim);
            let mut p = FluxPromptEncoder::load(model, joint, pooled, device, DType::F32)?;
            p.max_sequence_length = max_sequence_length.unwrap_or(p.max_sequence_length);
            Self::Flux(Box::new(p))
        } else {
            // SD3's T5 is optional, as in the pipeline (zeros without it).
            let c: SD3TransformerConfig = serde_json::from_value(raw)
                .with_context(|| format!("{}: not an SD3 transformer config", dir.display()))?;
            let mut p = Sd3PromptEncoder::load(model, c.joint_attention_dim, true, device, DType::F32)?;
            p.max_sequence_length = max_sequence_length.unwrap_or(p.max_sequence_length);
            Self::Sd3(Box::new(p))
        })
    }

    fn encode(&self, caption: &str) -> Result<(Tensor<3>, Tensor<2>)> {
        match self {
            Self::Sdxl(p) => Ok(p.encode(caption)),
            Self::Sd3(p) => p.encode(caption),
            Self::Flux(p) => p.encode(caption),
        }
    }

    fn context_dtype(&self) -> DType {
        match self {
            Self::Sdxl(_) => DType::F32,
            Self::Sd3(_) | Self::Flux(_) => DType::BF16,
        }
    }
}

/// Keys of a shard: `{chosen,rejected}_{mean,logvar}` [N,4,h,w] (unscaled VAE
/// distribution), `encoder_hidden_states` [N,77,D], `text_embeds` [N,P], `time_ids` [N,6],
/// `file_index` and `row` [N] (where each pair came from: `meta.files[file_index]`).
/// Unpaired rows: `image_{mean,logvar}` and `label` [N] (i64, 1 desirable) instead of the
/// chosen and rejected latents.
#[derive(Default)]
struct ShardBuffer {
    /// Per row, the latent tensors in the order of [`latent_keys`].
    tensors: Vec<Vec<Tensor<4>>>,
    labels: Vec<i64>,
    context: Vec<Tensor<3>>,
    /// Store `context` in bf16 (converted on the host: WGSL has no bf16 to cast to).
    context_bf16: bool,
    text_embeds: Vec<Tensor<2>>,
    time_ids: Vec<f32>,
    source: Vec<(i64, i64)>,
}

pub fn build(args: &CacheArgs) -> Result<CacheIndex> {
    let reader = PairReader::open(&args.data, args.read.clone())?;
    let vae_dir = component_dir(&args.model, "vae")?;
    let (vae_config_raw, vae_config) = {
        let (cfg, raw) = crate::models::config::read_config::<VaeConfig>(&vae_dir)?;
        (raw, cfg)
    };
    let meta = CacheMeta {
        version: 1,
        model: std::fs::canonicalize(&args.model).unwrap_or_else(|_| args.model.clone()),
        vae_config: vae_config_raw,
        scaling_factor: vae_config.scaling_factor,
        shift_factor: vae_config.shift_factor,
        resolution: args.transform.resolution,
        transform: args.transform.clone(),
        read: args.read.clone(),
        seed: args.seed,
        files: reader.files().iter().map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())).collect(),
    };
    // A finished cache is only read: concurrent runs of an experiment all find it so
    // (index.json is written atomically, `complete` last), without waiting on the lock.
    if let Ok(existing) = CacheIndex::read(&args.out)
        && existing.complete
        && existing.meta == meta
    {
        return Ok(existing);
    }
    // One writer per cache folder: two runs on one --out would interleave their shards.
    let _lock = crate::util::lock::lock(&args.out)?;
    let mut index = match CacheIndex::read(&args.out) {
        Ok(existing) => {
            if existing.meta != meta {
                bail!(
                    "{}: this cache was made with other settings ({}); use a new --out folder",
                    args.out.display(),
                    differences(&existing.meta, &meta)
                );
            }
            if existing.complete {
                eprintln!("{}: complete ({} pairs)", args.out.display(), existing.pairs());
                return Ok(existing);
            }
            eprintln!("{}: resuming after {} pairs", args.out.display(), existing.pairs());
            existing
        }
        Err(_) if args.out.join("index.json").exists() => return Err(CacheIndex::read(&args.out).unwrap_err()),
        Err(_) => {
            let index =
                CacheIndex { meta, shards: Vec::new(), next_position: 0, skipped: Skipped::default(), complete: false };
            // Written before the first shard, so a later run with other settings is refused
            // even when this one stops before its first shard.
            write_atomic(&args.out.join("index.json"), serde_json::to_string_pretty(&index)?.as_bytes())?;
            index
        }
    };

    let selected = crate::device::select(args.device.as_deref())?;
    let device = selected.device;
    let enc = Encoders {
        vae: AutoencoderKL::from_dir(&vae_dir, &device, DType::F32)?.0,
        prompts: Prompts::load(&args.model, args.max_sequence_length, &device)?,
        device,
    };
    // Rows include ties and bad rows, so the bar may finish short of its end.
    let total = args.read.max_samples.unwrap_or(usize::MAX).min(reader.total_rows());
    let unit = if args.read.unpaired { "images" } else { "pairs" };
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}} {unit} [{{elapsed_precise}}<{{eta_precise}}, {{per_sec}}] {{msg}}"
        ))
        .expect("template"),
    );
    bar.set_position(index.pairs() as u64);
    let loader = LoaderConfig {
        transform: args.transform.clone(),
        seed: args.seed,
        workers: args.workers.max(1),
        queue: (args.batch * 4).max(8),
        skip: index.next_position,
    };
    let t0 = Instant::now();
    // Bad images are only seen when decoded: keep a running count in the index so that a
    // resumed cache reports those of the earlier runs too. Positions count every kept
    // row, so the gaps between delivered positions are the bad images.
    let (bad_before, start) = (index.skipped.bad_image, index.next_position);
    let mut delivered = 0usize;
    let mut buffer = ShardBuffer::default();
    let mut batch: Vec<(usize, Prepared, (i64, i64))> = Vec::new();
    let skipped = for_each_prepared(&reader, &loader, |position, p| {
        let file_index = reader.files().iter().position(|f| *f == p.file).unwrap_or(0) as i64;
        let source = (file_index, p.row as i64);
        delivered += 1;
        batch.push((position, p, source));
        // Shards hold exactly `shard_size` pairs: a VAE batch never crosses a shard.
        if batch.len() >= args.batch || buffer.source.len() + batch.len() >= args.shard_size {
            encode(&enc, &mut batch, &mut buffer)?;
        }
        if buffer.source.len() >= args.shard_size {
            index.skipped.bad_image = bad_before + (position + 1 - start) - delivered;
            flush(&args.out, &mut index, &mut buffer, position + 1)?;
            bar.set_position(index.pairs() as u64);
        }
        Ok(true)
    })?;
    encode(&enc, &mut batch, &mut buffer)?;
    let end = index.next_position + buffer.source.len();
    flush(&args.out, &mut index, &mut buffer, end)?;
    // The reader re-reads the skipped prefix on resume, so its counts are complete.
    index.skipped = Skipped { bad_image: bad_before + skipped.bad_image, ..skipped };
    index.complete = true;
    write_atomic(&args.out.join("index.json"), serde_json::to_string_pretty(&index)?.as_bytes())?;
    bar.finish();
    anyhow::ensure!(
        index.pairs() > 0,
        "{}: no usable {} was read (an empty file, ties only, or columns of the wrong type: see the warnings \
         above); nothing to cache",
        args.data.display(),
        if args.read.unpaired { "image" } else { "pair" }
    );
    let dt = t0.elapsed().as_secs_f64();
    eprintln!(
        "cached {} {unit} in {} shards ({dt:.1} s); skipped: {} ties, {} not a preference, {} missing values, {} bad images",
        index.pairs(),
        index.shards.len(),
        index.skipped.ties,
        index.skipped.not_a_preference,
        index.skipped.missing_value,
        index.skipped.bad_image
    );
    Ok(index)
}

fn differences(a: &CacheMeta, b: &CacheMeta) -> String {
    let (a, b) = (serde_json::to_value(a).expect("json"), serde_json::to_value(b).expect("json"));
    let keys: Vec<String> = a
        .as_object()
        .expect("object")
        .iter()
        .filter(|(k, v)| b.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    format!("differs in {}", keys.join(", "))
}

/// Runs the VAE on a batch of pairs and the text encoders on their captions.
fn encode(enc: &Encoders, batch: &mut Vec<(usize, Prepared, (i64, i64))>, buffer: &mut ShardBuffer) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let n = batch.len();
    let r = batch[0].1.time_ids[4] as usize;
    let unpaired = batch[0].1.label.is_some();
    let images = if unpaired { 1 } else { 2 };
    let mut pixels = Vec::with_capacity(images * n * 3 * r * r);
    for (_, p, _) in batch.iter() {
        pixels.extend_from_slice(&p.chosen);
    }
    for (_, p, _) in batch.iter().filter(|_| !unpaired) {
        pixels.extend_from_slice(&p.rejected);
    }
    let x = Tensor::<4>::from_data(TensorData::new(pixels, [images * n, 3, r, r]), &enc.device);
    let (mean, logvar) = enc.vae.encode(x);
    for (i, (_, p, source)) in batch.iter().enumerate() {
        // Rows i (chosen, or the unpaired image) and n + i (rejected).
        let one = |t: &Tensor<4>, k: usize| t.clone().narrow(0, k * n + i, 1);
        buffer.tensors.push((0..images).flat_map(|k| [one(&mean, k), one(&logvar, k)]).collect());
        if let Some(desirable) = p.label {
            buffer.labels.push(desirable as i64);
        }
        let (context, pooled) = enc.prompts.encode(p.caption.as_deref().unwrap_or(""))?;
        buffer.context.push(context);
        buffer.context_bf16 = enc.prompts.context_dtype() == DType::BF16;
        buffer.text_embeds.push(pooled);
        buffer.time_ids.extend_from_slice(&p.time_ids);
        buffer.source.push(*source);
    }
    batch.clear();
    Ok(())
}

fn flush(out: &Path, index: &mut CacheIndex, buffer: &mut ShardBuffer, next_position: usize) -> Result<()> {
    let n = buffer.source.len();
    if n == 0 {
        return Ok(());
    }
    let b = std::mem::take(buffer);
    let stack = |k: usize| Tensor::cat(b.tensors.iter().map(|t| t[k].clone()).collect(), 0).into_data();
    let unpaired = !b.labels.is_empty();
    let mut tensors: Vec<(String, TensorData)> =
        latent_keys(unpaired).iter().enumerate().map(|(k, name)| (name.to_string(), stack(k))).collect();
    if unpaired {
        tensors.push(("label".into(), TensorData::new(b.labels, [n])));
    }
    tensors.extend([
        ("encoder_hidden_states".into(), {
            let data = Tensor::cat(b.context, 0).cast(DType::F32).into_data();
            if b.context_bf16 { data.convert::<burn::tensor::bf16>() } else { data }
        }),
        ("text_embeds".into(), Tensor::cat(b.text_embeds, 0).into_data()),
        ("time_ids".into(), TensorData::new(b.time_ids, [n, 6])),
        ("file_index".into(), TensorData::new(b.source.iter().map(|s| s.0).collect::<Vec<i64>>(), [n])),
        ("row".into(), TensorData::new(b.source.iter().map(|s| s.1).collect::<Vec<i64>>(), [n])),
    ]);
    append_shard(out, index, tensors, n, next_position)
}

/// The latent keys of a shard, mean before log-variance for each image.
pub fn latent_keys(unpaired: bool) -> &'static [&'static str] {
    if unpaired {
        &["image_mean", "image_logvar"]
    } else {
        &["chosen_mean", "chosen_logvar", "rejected_mean", "rejected_logvar"]
    }
}

/// Writes the next shard (the keys of [`ShardBuffer`]) and the index that lists it: the
/// shard is complete on disk before the index names it.
pub fn append_shard(
    out: &Path,
    index: &mut CacheIndex,
    tensors: Vec<(String, TensorData)>,
    pairs: usize,
    next_position: usize,
) -> Result<()> {
    let file = format!("shard-{:05}.safetensors", index.shards.len());
    write_tensors(&out.join(&file), tensors)?;
    index.shards.push(Shard { file, pairs, end_position: next_position });
    index.next_position = next_position;
    write_atomic(&out.join("index.json"), serde_json::to_string_pretty(index)?.as_bytes())
}

/// Marks the cache complete (training refuses an incomplete one).
pub fn finish(out: &Path, index: &mut CacheIndex) -> Result<()> {
    index.complete = true;
    write_atomic(&out.join("index.json"), serde_json::to_string_pretty(index)?.as_bytes())
}

/// Whether `data` names parquet input (a `.parquet` file, a pattern, or a folder of
/// parquet files) rather than a pairs file or a cache folder.
pub fn is_parquet(data: &Path) -> bool {
    let text = data.to_string_lossy();
    if data.is_dir() {
        return !data.join("index.json").is_file();
    }
    text.ends_with(".parquet") || text.contains('*')
}

/// The cache of `data` in `out`, built (or finished) first when needed: training and
/// experiments given parquet files encode them once, then read tensors.
pub fn ensure(
    model: &Path,
    data: &Path,
    out: &Path,
    transform: &TransformConfig,
    read: &ReadOptions,
    seed: u64,
    device: Option<&str>,
) -> Result<PathBuf> {
    let args = CacheArgs {
        model: model.to_path_buf(),
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        transform: transform.clone(),
        read: read.clone(),
        seed,
        shard_size: 256,
        batch: 4,
        workers: super::loader::LoaderConfig::default().workers,
        device: device.map(String::from),
        max_sequence_length: None,
    };
    build(&args)?;
    Ok(out.to_path_buf())
}
