//! `curves.png`: training loss and the scorer's metrics against steps, one line per run; for
//! online runs the training reward too, and the first metric against training seconds (runs
//! whose steps cost differently compare on the clock).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::report::RunData;
use crate::eval::metrics;
use crate::eval::plot::{PALETTE, register_font};

/// A run's line: its label, its colour (fixed per run across panels) and its points.
type Series = (String, RGBColor, Vec<(f64, f64)>);

/// Exponential moving average, so that per-step loss noise does not hide the trend.
fn smooth(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut acc = None;
    points
        .iter()
        .map(|&(x, y)| {
            let v = acc.map_or(y, |a: f64| a + alpha * (y - a));
            acc = Some(v);
            (x, v)
        })
        .collect()
}

/// One panel's title, x axis and lines.
struct Panel {
    title: String,
    x: &'static str,
    series: Vec<Series>,
}

fn panel(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, p: &Panel) -> Result<()> {
    let (title, series) = (p.title.as_str(), &p.series);
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        return Ok(());
    }
    // A flat series (a share stuck at 0) still gets a readable axis.
    let pad = if y1 - y0 > 1e-9 { (y1 - y0) * 0.05 } else { (y0.abs() * 0.05).max(0.05) };
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {title}: {e:?}");
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))
        .map_err(err)?;
    // Steps and seconds as whole numbers.
    let step_label = |x: &f64| format!("{}", x.round() as i64);
    chart
        .configure_mesh()
        .x_desc(p.x)
        .x_labels(6)
        .x_label_formatter(&step_label)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    for (_, colour, points) in series {
        chart.draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2))).map_err(err)?;
    }
    Ok(())
}

const LEGEND_ROW: u32 = 20;

/// One legend for all panels, below them, so that it never covers a curve.
fn legend(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    entries: &[(String, RGBColor)],
    per_row: usize,
) -> Result<()> {
    let (w, _) = area.dim_in_pixel();
    let cell = w as i32 / per_row as i32;
    for (i, (name, colour)) in entries.iter().enumerate() {
        let (x, y) = (8 + (i % per_row) as i32 * cell, 4 + (i / per_row) as i32 * LEGEND_ROW as i32);
        area.draw(&PathElement::new(vec![(x, y + 7), (x + 22, y + 7)], colour.stroke_width(3)))
            .map_err(|e| anyhow!("{e:?}"))?;
        area.draw_text(name, &("sans-serif", 12).into_font().color(&BLACK), (x + 28, y))
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    Ok(())
}

/// Draws the curves; returns false (and writes nothing) when no run has any.
pub fn curves(path: &Path, runs: &[RunData]) -> Result<bool> {
    register_font();
    let trained: Vec<&RunData> = runs.iter().filter(|r| !r.metrics.is_empty()).collect();
    if trained.is_empty() {
        return Ok(false);
    }
    // Runs of one experiment on two backends share names: say which is which.
    let backends: std::collections::BTreeSet<&str> = trained.iter().map(|r| r.summary.backend.as_str()).collect();
    let label = |r: &RunData| {
        if backends.len() > 1 { format!("{} [{}]", r.summary.run, r.summary.backend) } else { r.summary.run.clone() }
    };
    let colour = |i: usize| PALETTE[i % PALETTE.len()];
    let loss: Vec<Series> = trained
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let pts: Vec<(f64, f64)> = r
                .metrics
                .iter()
                .filter_map(|m| Some((m["step"].as_f64()?, m["loss"].as_f64()?)))
                .filter(|p| p.1.is_finite())
                .collect();
            (label(r), colour(i), smooth(&pts, 0.1))
        })
        .collect();
    let eval = |key: &str| -> Vec<Series> {
        trained
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.evals.is_empty())
            .map(|(i, r)| {
                (label(r), colour(i), r.evals.iter().filter_map(|e| Some((e.step as f64, e.get(key)?))).collect())
            })
            .collect()
    };
    let mut panels = vec![Panel { title: "training loss (EMA 0.1)".into(), x: "step", series: loss }];
    // Online runs: the reward of their own samples, per iteration.
    let reward: Vec<Series> = trained
        .iter()
        .enumerate()
        .map(|(i, r)| {
            (
                label(r),
                colour(i),
                r.metrics.iter().filter_map(|m| Some((m["step"].as_f64()?, m["reward"].as_f64()?))).collect::<Vec<_>>(),
            )
        })
        .filter(|s| !s.2.is_empty())
        .collect();
    if !reward.is_empty() {
        panels.push(Panel {
            title: "online: reward of the iteration's samples".into(),
            x: "iteration",
            series: reward,
        });
    }
    // One panel per metric with a direction (the held pairs' rejected error goes with the
    // chosen one in the table only), at most four.
    let names = metrics::present(trained.iter().flat_map(|r| r.evals.iter()));
    let directed: Vec<&String> = names.iter().filter(|k| metrics::info(k).better != metrics::Better::Neither).collect();
    for key in directed.iter().take(4) {
        let info = metrics::info(key);
        let title = if info.panel.is_empty() { key.to_string() } else { info.panel.to_string() };
        panels.push(Panel { title, x: "step", series: eval(key) });
    }
    // The first metric against the training time of each evaluated step, when an online run
    // is among the runs.
    if let (Some(key), true) = (directed.first(), panels.iter().any(|p| p.x == "iteration")) {
        let clock: Vec<Series> = trained
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.evals.is_empty())
            .map(|(i, r)| {
                let at = training_seconds(&r.metrics);
                let pts = r.evals.iter().filter_map(|e| Some((at(e.step)?, e.get(key)?))).collect();
                (label(r), colour(i), pts)
            })
            .collect();
        let info = metrics::info(key);
        let name = if info.panel.is_empty() { key.to_string() } else { info.panel.to_string() };
        panels.push(Panel { title: format!("{name} against training time"), x: "training s", series: clock });
    }
    let entries: Vec<(String, RGBColor)> = trained.iter().enumerate().map(|(i, r)| (label(r), colour(i))).collect();
    let per_row = (panels.len() * 2).max(2);
    let legend_h = LEGEND_ROW * entries.len().div_ceil(per_row) as u32 + 8;
    let (w, h) = (460 * panels.len() as u32, 420 + legend_h);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
        let (plots, below) = root.split_vertically(420);
        for (area, p) in plots.split_evenly((1, panels.len())).iter().zip(&panels) {
            panel(area, p)?;
        }
        legend(&below, &entries, per_row)?;
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size");
    crate::util::save_image(path, &img)?;
    Ok(true)
}

/// Seconds of training up to the end of each step (0 before the first): the logged step
/// times summed (an online iteration's sampling, scoring and training; no evaluation).
fn training_seconds(metrics: &[serde_json::Value]) -> impl Fn(usize) -> Option<f64> {
    let mut at = vec![(0usize, 0.0f64)];
    let mut sum = 0.0;
    for m in metrics {
        let (Some(step), Some(dt)) = (m["step"].as_u64(), m["step_time_s"].as_f64()) else { continue };
        sum += dt;
        at.push((step as usize, sum));
    }
    move |step| at.iter().rev().find(|(s, _)| *s <= step).map(|(_, t)| *t)
}
