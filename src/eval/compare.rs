//! The report of `mapo eval`: per scorer and variant, the mean with its 95% bootstrap
//! interval and the win rate against the first variant, as `report.md`, `eval.json` and a
//! bar chart with error bars (`scores.png`).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::plot::{PALETTE, register_font};
use super::stats::{Estimate, mean_ci, win_rate};
use crate::util::write_atomic;

#[derive(Debug, Clone, serde::Serialize)]
pub struct VariantResult {
    pub variant: String,
    pub n: usize,
    pub mean: Estimate,
    /// Against the first variant (None for the first itself).
    pub win_rate: Option<Estimate>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScorerResult {
    pub scorer: String,
    pub variants: Vec<VariantResult>,
}

/// `scores[v]`: variant v's scores, the same (prompt, seed) order for every variant; NaN
/// for an image that could not be scored (left out of its pairs).
pub fn summarise(scorer: &str, names: &[String], scores: &[Vec<f64>]) -> ScorerResult {
    let base = &scores[0];
    let variants = names
        .iter()
        .zip(scores)
        .enumerate()
        .map(|(v, (name, s))| {
            let ok: Vec<f64> = s.iter().copied().filter(|x| x.is_finite()).collect();
            let paired: (Vec<f64>, Vec<f64>) =
                s.iter().zip(base).filter(|(a, b)| a.is_finite() && b.is_finite()).map(|(a, b)| (*a, *b)).unzip();
            VariantResult {
                variant: name.clone(),
                n: ok.len(),
                mean: mean_ci(&ok, 17),
                win_rate: (v > 0).then(|| win_rate(&paired.0, &paired.1, 29)),
            }
        })
        .collect();
    ScorerResult { scorer: scorer.to_string(), variants }
}

fn fmt(e: &Estimate) -> String {
    format!("{:.4} [{:.4}, {:.4}]", e.value, e.low, e.high)
}

pub fn write(out: &Path, results: &[ScorerResult], header: &str) -> Result<()> {
    let mut md = format!("# Evaluation\n\n{header}\n\n");
    for r in results {
        md.push_str(&format!(
            "## {}\n\n| variant | n | mean [95% CI] | win rate vs {} [95% CI] |\n|---|---:|---:|---:|\n",
            r.scorer, r.variants[0].variant
        ));
        for v in &r.variants {
            let win = v.win_rate.as_ref().map_or("—".to_string(), fmt);
            md.push_str(&format!("| {} | {} | {} | {} |\n", v.variant, v.n, fmt(&v.mean), win));
        }
        md.push('\n');
    }
    md.push_str("Intervals: percentile bootstrap (2000 resamples, seeded); win rate paired by prompt and seed, ties count half.\n\n![scores](scores.png)\n\n![grid](grid.png)\n");
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    write_atomic(&out.join("eval.json"), serde_json::to_string_pretty(results)?.as_bytes())?;
    bars(&out.join("scores.png"), results)
}

/// A bar chart's value axis: from 0 (bars start there) to past every value, never
/// degenerate, with as many decimals as its ticks need to read apart — a flat metric (every
/// score 0, or every score 0.75) gets a readable axis, not ten labels of `0.0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueAxis {
    pub lo: f64,
    pub hi: f64,
    decimals: usize,
}

impl ValueAxis {
    pub const TICKS: usize = 6;

    pub fn around(values: impl Iterator<Item = f64>) -> Self {
        let (mut lo, mut hi) = (0f64, 0f64);
        for v in values.filter(|v| v.is_finite()) {
            (lo, hi) = (lo.min(v), hi.max(v));
        }
        // A span of at least a tenth of the largest magnitude (1 when everything is 0).
        let magnitude = lo.abs().max(hi.abs());
        let span = (hi - lo).max(if magnitude > 0.0 { 0.1 * magnitude } else { 1.0 });
        let pad = 0.1 * span;
        let (lo, hi) = (if lo < 0.0 { lo - pad } else { lo }, hi.max(lo + span) + pad);
        let step = (hi - lo) / (Self::TICKS - 1) as f64;
        let decimals = (-step.log10()).ceil().max(0.0) as usize;
        Self { lo, hi, decimals }
    }

    pub fn label(&self, y: f64) -> String {
        format!("{y:.*}", self.decimals)
    }
}

/// One panel per scorer: a bar per variant at its mean, a whisker over its interval.
fn bars(path: &Path, results: &[ScorerResult]) -> Result<()> {
    register_font();
    let (w, h) = (360 * results.len().max(1) as u32, 320u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
        for (area, r) in root.split_evenly((1, results.len().max(1))).iter().zip(results) {
            let ends = r.variants.iter().flat_map(|v| [v.mean.low, v.mean.high, v.mean.value]);
            let axis = ValueAxis::around(ends);
            let n = r.variants.len();
            let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e:?}", r.scorer);
            let names: Vec<String> = r.variants.iter().map(|v| v.variant.clone()).collect();
            let label = move |x: &f64| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            };
            let mut chart = ChartBuilder::on(area)
                .caption(&r.scorer, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(56)
                .build_cartesian_2d(-0.6f64..(n as f64 - 0.4), axis.lo..axis.hi)
                .map_err(err)?;
            let y_label = |y: &f64| axis.label(*y);
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(n.max(1))
                .x_label_formatter(&label)
                .y_labels(ValueAxis::TICKS)
                .y_label_formatter(&y_label)
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(err)?;
            for (i, v) in r.variants.iter().enumerate() {
                let (x, c) = (i as f64, PALETTE[i % PALETTE.len()]);
                chart
                    .draw_series([Rectangle::new([(x - 0.3, 0.0), (x + 0.3, v.mean.value)], c.filled())])
                    .map_err(err)?;
                if v.mean.low.is_finite() {
                    chart
                        .draw_series([PathElement::new(vec![(x, v.mean.low), (x, v.mean.high)], BLACK.stroke_width(2))])
                        .map_err(err)?;
                }
            }
        }
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size");
    crate::util::save_image(path, &img)
}

/// `grid.png`: rows = the first `rows` prompts (seed 0), columns = variants, with the
/// variants' names above the columns.
pub fn grid(out: &Path, variants: &[String], rows: usize) -> Result<()> {
    register_font();
    let cell = |v: &str, p: usize| out.join("images").join(v).join(format!("{p:05}-s0.png"));
    let first = image::open(cell(&variants[0], 0)).map_err(|e| anyhow!("{}: {e}", cell(&variants[0], 0).display()))?;
    // Small images are enlarged (nearest neighbour) to at least 128 pixels.
    let scale = (128 / first.width().max(1)).max(1);
    let (cw, ch) = (first.width() * scale, first.height() * scale);
    let (gap, header) = (4u32, 24u32);
    let (w, h) = (gap + (cw + gap) * variants.len() as u32, header + gap + (ch + gap) * rows as u32);
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (c, v) in variants.iter().enumerate() {
        for p in 0..rows {
            let img = image::open(cell(v, p)).map_err(|e| anyhow!("{}: {e}", cell(v, p).display()))?.to_rgb8();
            let img = image::imageops::resize(&img, cw, ch, image::imageops::FilterType::Nearest);
            image::imageops::overlay(
                &mut canvas,
                &img,
                (gap + c as u32 * (cw + gap)) as i64,
                (header + gap + p as u32 * (ch + gap)) as i64,
            );
        }
    }
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        for (c, v) in variants.iter().enumerate() {
            let x = (gap + c as u32 * (cw + gap)) as i32;
            root.draw_text(v, &("sans-serif", 13).into_font().color(&BLACK), (x, 5)).map_err(|e| anyhow!("{e:?}"))?;
        }
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size");
    let path = out.join("grid.png");
    crate::util::save_image(&path, &img)
}

#[cfg(test)]
mod tests {
    use super::ValueAxis;

    /// Labels at the axis's ticks, as plotters places them (evenly from lo to hi).
    fn labels(axis: &ValueAxis) -> Vec<String> {
        let n = ValueAxis::TICKS;
        (0..n).map(|i| axis.label(axis.lo + (axis.hi - axis.lo) * i as f64 / (n - 1) as f64)).collect()
    }

    #[test]
    fn flat_and_tiny_metrics_get_readable_distinct_labels() {
        for values in [vec![0.0, 0.0], vec![0.75, 0.75, 0.75], vec![0.0312, 0.0315], vec![-2.0, 5.0], vec![21.3, 21.31]]
        {
            let axis = ValueAxis::around(values.iter().copied());
            assert!(
                axis.hi > axis.lo && values.iter().all(|v| (axis.lo..=axis.hi).contains(v)),
                "{values:?}: {axis:?}"
            );
            let l = labels(&axis);
            let mut distinct = l.clone();
            distinct.dedup();
            assert_eq!(distinct.len(), l.len(), "{values:?}: labels {l:?}");
        }
        assert_eq!(labels(&ValueAxis::around([0.0, 0.0].into_iter()))[0], "0.0");
    }
}
