//! `mapo score` (docs/design.md §2): scores images listed in a JSON-lines file with a reward model.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::select;
use crate::eval::preprocess::read_rgb;
use crate::eval::resize::Rgb8;
use crate::eval::scorer::{Scorer, ScorerFiles, load_scorer};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ScorerName {
    Pickscore,
    Hps,
    Aesthetic,
    Clip,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    #[arg(long)]
    pub scorer: ScorerName,
    /// pickscore, clip: a transformers CLIPModel folder (with preprocessor_config.json,
    /// vocab.json, merges.txt).
    #[arg(long)]
    pub model: PathBuf,
    /// aesthetic: the ViT-L/14 CLIPModel folder.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// hps: an open_clip model config (default ViT-H-14).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// hps: a CLIP tokenizer folder (vocab.json + merges.txt).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// One `{"image": PATH, "prompt": TEXT}` per line (paths relative to the file's folder).
    #[arg(long)]
    pub pairs: PathBuf,
    /// The same rows with `"score"` added (null, with `"error"`, for an image that does not decode).
    #[arg(long)]
    pub out: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, env = "MAPO_DEVICE")]
    pub device: Option<String>,
}

struct Row {
    json: serde_json::Map<String, serde_json::Value>,
    image: PathBuf,
    prompt: String,
}

fn read_pairs(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = || format!("{} line {}", path.display(), i + 1);
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let serde_json::Value::Object(json) = value else { bail!("{}: not a JSON object", at()) };
        let image =
            json.get("image").and_then(|v| v.as_str()).with_context(|| format!("{}: no \"image\" path", at()))?;
        let prompt = json.get("prompt").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        rows.push(Row { image: base.join(image), prompt, json });
    }
    ensure!(!rows.is_empty(), "{}: no rows to score", path.display());
    Ok(rows)
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    ensure!(args.batch > 0, "--batch must be > 0");
    let rows = read_pairs(&args.pairs)?;
    let device = select(args.device.as_deref())?.device;
    let name = args.scorer.to_possible_value().expect("no skipped variants").get_name().to_string();
    let extra = ScorerFiles {
        clip: args.clip.as_deref(),
        config: args.config.as_deref(),
        tokenizer: args.tokenizer.as_deref(),
    };
    let scorer = load_scorer(&name, &args.model, extra, &device)?;
    if scorer.needs_text()
        && let Some(r) = rows.iter().find(|r| r.prompt.is_empty())
    {
        bail!("{}: {} has no \"prompt\", which {} needs", args.pairs.display(), r.image.display(), scorer.name());
    }
    let bar = ProgressBar::new(rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images [{elapsed_precise}<{eta_precise}, {per_sec}]")
            .expect("template"),
    );
    // One writer per output file; the temporary is this process's own.
    let _lock = crate::util::lock::lock_file(&args.out)?;
    let tmp = crate::util::tmp_path(&args.out)?;
    let result = write_scores(&rows, scorer.as_ref(), args, &tmp, &bar);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let bad = result?;
    crate::util::rename_into_place(&tmp, &args.out)?;
    bar.finish_and_clear();
    eprintln!(
        "{}: {} images scored with {}{}",
        args.out.display(),
        rows.len() - bad,
        scorer.name(),
        if bad > 0 { format!(", {bad} skipped (no score: see their \"error\")") } else { String::new() }
    );
    Ok(())
}

/// Scores every row into `tmp`; returns how many rows got no score.
fn write_scores(rows: &[Row], scorer: &dyn Scorer, args: &ScoreArgs, tmp: &Path, bar: &ProgressBar) -> Result<usize> {
    let file = std::fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut bad = 0;
    for chunk in rows.chunks(args.batch) {
        // Each image is decoded and at once shrunk to what the scorer reads, so a batch of
        // huge images holds one full decode at a time. One that does not decode is
        // reported and left out of the batch.
        let decoded: Vec<Result<Rgb8>> = chunk
            .iter()
            .map(|r| read_rgb(&r.image).and_then(|i| scorer.shrink(i).context(r.image.display().to_string())))
            .collect();
        // The images move into the batch; each row keeps whether it decoded (or why not).
        let (mut images, mut prompts, mut outcomes) = (Vec::new(), Vec::new(), Vec::new());
        for (r, d) in chunk.iter().zip(decoded) {
            outcomes.push(d.map(|img| {
                images.push(img);
                prompts.push(r.prompt.clone());
            }));
        }
        let mut scores = scorer.score(&images, &prompts)?.into_iter();
        for (r, d) in chunk.iter().zip(outcomes) {
            let mut json = r.json.clone();
            // A score from an earlier run of this file's rows is replaced, never kept beside.
            json.remove("error");
            let score = d.and_then(|_| {
                let s = scores.next().expect("one score per image");
                ensure!(s.is_finite(), "{}: the scorer gave {s} (not a finite number)", r.image.display());
                Ok(s)
            });
            match score {
                Ok(s) => {
                    json.insert("score".into(), s.into());
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    bar.suspend(|| eprintln!("warning: {e}; skipped"));
                    bad += 1;
                    json.insert("score".into(), serde_json::Value::Null);
                    json.insert("error".into(), e.into());
                }
            }
            writeln!(out, "{}", serde_json::Value::Object(json))?;
        }
        bar.inc(chunk.len() as u64);
    }
    out.flush().with_context(|| format!("writing {}", tmp.display()))?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all().with_context(|| format!("writing {}", tmp.display()))?;
    Ok(bad)
}
