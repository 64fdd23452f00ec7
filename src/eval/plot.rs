//! `curves.png`: training loss and the scorer's metrics against steps, one line per run.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::report::RunData;

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// plotters draws text with fonts registered by name; mapo ships its own (no system fonts).
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            panic!("the bundled font does not parse");
        }
    });
}

type Series = (String, Vec<(f64, f64)>);

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

fn panel(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, title: &str, series: &[Series]) -> Result<()> {
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in pts {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        return Ok(());
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {title}: {e:?}");
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))
        .map_err(err)?;
    chart.configure_mesh().x_desc("step").label_style(("sans-serif", 12)).draw().map_err(err)?;
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 11))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
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
    let loss: Vec<Series> = trained
        .iter()
        .map(|r| {
            let pts: Vec<(f64, f64)> = r
                .metrics
                .iter()
                .filter_map(|m| Some((m["step"].as_f64()?, m["loss"].as_f64()?)))
                .filter(|p| p.1.is_finite())
                .collect();
            (label(r), smooth(&pts, 0.1))
        })
        .collect();
    let eval = |f: fn(&crate::experiment::toy_eval::ToyMetrics) -> f64| -> Vec<Series> {
        trained
            .iter()
            .filter(|r| !r.evals.is_empty())
            .map(|r| (label(r), r.evals.iter().map(|e| (e.step as f64, f(e))).collect()))
            .collect()
    };
    let mut panels: Vec<(&str, Vec<Series>)> = vec![("training loss (EMA 0.1)", loss)];
    let style = eval(|e| e.style_b);
    if !style.is_empty() {
        panels.push(("style B share of samples", style));
        panels.push(("prompt fidelity", eval(|e| e.fidelity)));
        panels.push(("chosen error (held pairs)", eval(|e| e.chosen_error)));
    }
    let (w, h) = (460 * panels.len() as u32, 420u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
        for (area, (title, series)) in root.split_evenly((1, panels.len())).iter().zip(&panels) {
            panel(area, title, series)?;
        }
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size");
    img.save(path).map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(true)
}
