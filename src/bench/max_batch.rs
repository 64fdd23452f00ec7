//! `mapo bench max-batch`: the largest batch whose training step runs, by search. Each
//! trial is a child `mapo bench train-step` process, so an out-of-memory abort (or a CUDA
//! OOM panic) ends the trial, not the search; `--limit-gb` also rejects batches whose peak
//! memory exceeds a budget (how it is used on CPU, where the OS would swap first).

use anyhow::{Context, Result};
use serde_json::json;

use super::TrainBench;

#[derive(clap::Args, Debug)]
pub struct MaxBatchBench {
    #[command(flatten)]
    pub step: TrainBench,
    /// Largest batch to try.
    #[arg(long, default_value_t = 256)]
    pub max: usize,
    /// Treat a peak above this many GB (device memory, else RSS) as not fitting.
    #[arg(long)]
    pub limit_gb: Option<f64>,
}

struct Trial {
    batch: usize,
    fits: bool,
    peak: Option<u64>,
}

fn trial(b: &MaxBatchBench, batch: usize) -> Result<Trial> {
    let s = &b.step;
    let exe = std::env::current_exe().context("locating the mapo binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["bench", "train-step", "--method", &s.method, "--model", &s.model, "--dtype", &s.device.dtype])
        .args(["--attention", &s.attention])
        .args([
            "--resolution",
            &s.resolution.to_string(),
            "--batch",
            &batch.to_string(),
            "--steps",
            "1",
            "--warmup",
            "1",
        ]);
    if let Some(n) = s.attention_block {
        cmd.args(["--attention-block", &n.to_string()]);
    }
    if let Some(r) = s.lora {
        cmd.args(["--lora", &r.to_string()]);
    }
    if s.grad_ckpt {
        cmd.arg("--grad-ckpt");
    }
    if let Some(d) = &s.device.device {
        cmd.args(["--device", d]);
    }
    let out = cmd.output().context("running a trial")?;
    let line = String::from_utf8_lossy(&out.stdout);
    let result: Option<serde_json::Value> = line.lines().last().and_then(|l| serde_json::from_str(l).ok());
    let peak = result.as_ref().and_then(|r| r["peak_device_bytes"].as_u64().or(r["peak_rss_bytes"].as_u64()));
    let within = match (b.limit_gb, peak) {
        (Some(limit), Some(p)) => (p as f64) <= limit * 1e9,
        _ => true,
    };
    let fits = out.status.success() && result.is_some() && within;
    eprintln!("batch {batch}: {}", if fits { "fits" } else { "does not fit" });
    Ok(Trial { batch, fits, peak })
}

/// Doubles from 1 until a batch fails (or `max`), then bisects.
pub fn run(b: &MaxBatchBench) -> Result<serde_json::Value> {
    let mut trials: Vec<Trial> = Vec::new();
    let (mut good, mut bad) = (0usize, None::<usize>);
    let mut n = 1;
    while n <= b.max {
        let t = trial(b, n)?;
        let fits = t.fits;
        trials.push(t);
        if !fits {
            bad = Some(n);
            break;
        }
        good = n;
        n *= 2;
    }
    if bad.is_none() && good < b.max {
        let t = trial(b, b.max)?;
        if t.fits {
            good = b.max;
        } else {
            bad = Some(b.max);
        }
        trials.push(t);
    }
    if let Some(mut hi) = bad {
        let mut lo = good;
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            let t = trial(b, mid)?;
            if t.fits {
                lo = mid;
            } else {
                hi = mid;
            }
            trials.push(t);
        }
        good = lo;
    }
    let s = &b.step;
    Ok(json!({
        "bench": "max-batch", "framework": "mapo", "method": s.method, "model": s.model, "resolution": s.resolution,
        "dtype": s.device.dtype, "lora": s.lora, "grad_ckpt": s.grad_ckpt, "attention": s.attention, "limit_gb": b.limit_gb, "max_tried": b.max,
        "max_batch": good,
        "trials": trials.iter().map(|t| json!({"batch": t.batch, "fits": t.fits, "peak_bytes": t.peak})).collect::<Vec<_>>(),
    }))
}
