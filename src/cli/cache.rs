//! `mapo cache` arguments: reader, transform and cache options.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::data::cache::{CacheArgs, build};
use crate::data::parquet::{Columns, ReadOptions};
use crate::data::transform::TransformConfig;

#[derive(clap::Args, Debug)]
pub struct CacheCommand {
    /// A diffusers SDXL folder or single file (its vae/, text encoders and tokenizers are used).
    #[arg(long)]
    pub model: PathBuf,
    /// With `--model FILE` of an architecture other than SDXL base: a diffusers folder of it
    /// (configs, tokenizers, scheduler; docs/cli.md).
    #[arg(long = "config", value_name = "DIR")]
    pub model_config: Option<PathBuf>,
    /// A parquet file, a folder of them, or a pattern like `dir/train-*.parquet`.
    #[arg(long)]
    pub data: PathBuf,
    /// The cache folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1024)]
    pub resolution: usize,
    /// Random crops (offsets recorded in time_ids) instead of centre crops.
    #[arg(long)]
    pub random_crop: bool,
    /// Probability of flipping a pair (both images) horizontally.
    #[arg(long, default_value_t = 0.0)]
    pub flip: f64,
    /// Probability of replacing a caption by the empty prompt.
    #[arg(long, default_value_t = 0.0)]
    pub caption_dropout: f64,
    /// Keep 0.5/0.5 ties (image 0 as chosen).
    #[arg(long)]
    pub keep_ties: bool,
    #[arg(long)]
    pub max_samples: Option<usize>,
    /// Shuffle the pairs with this seed (row groups and a 256-pair buffer).
    #[arg(long)]
    pub shuffle_seed: Option<u64>,
    /// Seed of crops, flips and caption dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Other column names: `--column caption=prompt` (keys caption, image_0, image_1,
    /// label_0, label_1; with --unpaired, image and label).
    #[arg(long = "column", value_name = "KEY=NAME")]
    pub columns: Vec<String>,
    /// Rows of one image and a binary label (columns `caption`, `image`, `label`: 1
    /// desirable, 0 undesirable) instead of pairs, for methods such as kto.
    #[arg(long)]
    pub unpaired: bool,
    #[arg(long, default_value_t = 256)]
    pub shard_size: usize,
    /// Pairs per VAE call.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Decoding threads (default: the machine's cores, at most 8).
    #[arg(long)]
    pub workers: Option<usize>,
    #[arg(long, env = "MAPO_DEVICE")]
    pub device: Option<String>,
    /// SD3 / FLUX: T5 tokens per caption (default: the pipeline's, 256 for SD3, 512 for FLUX).
    #[arg(long)]
    pub max_sequence_length: Option<usize>,
}

pub fn columns(pairs: &[String]) -> Result<Columns> {
    let mut c = Columns::default();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else { bail!("--column {p:?}: expected KEY=NAME") };
        let slot = match k {
            "caption" => &mut c.caption,
            "image_0" => &mut c.image_0,
            "image_1" => &mut c.image_1,
            "label_0" => &mut c.label_0,
            "label_1" => &mut c.label_1,
            "image" => &mut c.image,
            "label" => &mut c.label,
            other => bail!("--column {other:?}: expected caption, image_0, image_1, label_0, label_1, image or label"),
        };
        *slot = v.to_string();
    }
    Ok(c)
}

pub fn run(a: &CacheCommand) -> Result<()> {
    crate::models::folder::set_single_file_configs(a.model_config.as_deref());
    let args = CacheArgs {
        model: a.model.clone(),
        data: a.data.clone(),
        out: a.out.clone(),
        transform: TransformConfig {
            resolution: a.resolution,
            random_crop: a.random_crop,
            flip: a.flip,
            caption_dropout: a.caption_dropout,
        },
        read: ReadOptions {
            columns: columns(&a.columns)?,
            keep_ties: a.keep_ties,
            max_samples: a.max_samples,
            shuffle_seed: a.shuffle_seed,
            unpaired: a.unpaired,
            ..ReadOptions::default()
        },
        seed: a.seed,
        shard_size: a.shard_size.max(1),
        batch: a.batch.max(1),
        workers: a.workers.unwrap_or_else(|| crate::data::loader::LoaderConfig::default().workers),
        device: a.device.clone(),
        max_sequence_length: a.max_sequence_length,
    };
    args.transform.validate()?;
    if a.max_samples == Some(0) {
        bail!("--max-samples 0 would cache nothing: give a positive count or leave it out");
    }
    let index = build(&args)?;
    let unit = if a.unpaired { "images" } else { "pairs" };
    println!("{}: {} {unit} in {} shards", a.out.display(), index.pairs(), index.shards.len());
    Ok(())
}
