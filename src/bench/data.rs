//! `mapo bench data`: pairs/s of parquet streaming + decode + transform (no encoders), and
//! the peak memory while doing it.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::data::loader::{LoaderConfig, for_each_prepared};
use crate::data::parquet::{PairReader, ReadOptions};
use crate::data::transform::TransformConfig;

#[derive(clap::Args, Debug)]
pub struct DataBench {
    /// A parquet file, folder or pattern.
    #[arg(long)]
    pub data: std::path::PathBuf,
    #[arg(long, default_value_t = 1024)]
    pub resolution: usize,
    /// Decoding threads (default: the machine's cores, at most 8).
    #[arg(long)]
    pub workers: Option<usize>,
    #[arg(long)]
    pub max_samples: Option<usize>,
    #[arg(long)]
    pub random_crop: bool,
    /// Stream the pairs without decoding them (the reader's own memory and speed).
    #[arg(long)]
    pub read_only: bool,
}

pub fn run(b: &DataBench) -> Result<serde_json::Value> {
    let reader = PairReader::open(&b.data, ReadOptions { max_samples: b.max_samples, ..Default::default() })?;
    let mut config = LoaderConfig {
        transform: TransformConfig { resolution: b.resolution, random_crop: b.random_crop, ..Default::default() },
        ..Default::default()
    };
    if let Some(w) = b.workers {
        config.workers = w.max(1);
    }
    let t0 = Instant::now();
    let mut pairs = 0usize;
    let mut checksum = 0f64;
    let skipped = if b.read_only {
        reader.for_each(|p| {
            pairs += 1;
            checksum += (p.chosen.len() + p.rejected.len()) as f64;
            Ok(true)
        })?
    } else {
        for_each_prepared(&reader, &config, |_, p| {
            pairs += 1;
            checksum += p.chosen[0] as f64;
            Ok(true)
        })?
    };
    let dt = t0.elapsed().as_secs_f64();
    let bytes: u64 = reader.files().iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    Ok(json!({
        "bench": "data", "read_only": b.read_only, "resolution": b.resolution, "workers": config.workers, "pairs": pairs, "seconds": dt,
        "pairs_per_s": pairs as f64 / dt, "skipped": skipped, "file_bytes": bytes,
        "peak_rss_bytes": crate::util::peak_rss(), "checksum": checksum,
    }))
}
