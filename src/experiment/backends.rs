//! The same run on several backends, side by side: which runs of a report are one run
//! (same experiment run name) computed on different backends, and how far apart their loss
//! curves are. This is the figure behind "same numbers on every backend".

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::report::RunData;

#[derive(Debug, Serialize)]
pub struct BackendPair {
    pub run: String,
    /// "backend dtype" of the first folder's run, and of the other.
    pub a: String,
    pub b: String,
    /// Steps present in both loss curves.
    pub steps: usize,
    /// max over common steps of |a − b| / max(|a|, 1e-3).
    pub max_rel_loss_diff: f64,
    pub final_loss: (Option<f64>, Option<f64>),
}

fn loss_curve(run: &RunData) -> BTreeMap<u64, f64> {
    // A resumed run may repeat a step: the last one wins, as in the report.
    run.metrics.iter().filter_map(|m| Some((m["step"].as_u64()?, m["loss"].as_f64()?))).collect()
}

/// Every pair (first occurrence, later occurrence) of one run name on two different
/// backend/dtype settings.
pub fn compare(runs: &[RunData]) -> Vec<BackendPair> {
    let label = |r: &RunData| format!("{} {}", r.summary.backend, r.summary.dtype);
    let mut out = Vec::new();
    for (i, a) in runs.iter().enumerate() {
        let first = runs[..i].iter().all(|p| p.summary.run != a.summary.run);
        if !first || a.summary.method == "reference" {
            continue;
        }
        for b in runs[i + 1..].iter().filter(|b| b.summary.run == a.summary.run && label(b) != label(a)) {
            let (ca, cb) = (loss_curve(a), loss_curve(b));
            let common: Vec<(f64, f64)> = ca.iter().filter_map(|(s, x)| cb.get(s).map(|y| (*x, *y))).collect();
            let max_rel_loss_diff = common.iter().map(|(x, y)| (x - y).abs() / x.abs().max(1e-3)).fold(0.0, f64::max);
            out.push(BackendPair {
                run: a.summary.run.clone(),
                a: label(a),
                b: label(b),
                steps: common.len(),
                max_rel_loss_diff,
                final_loss: (a.summary.final_loss, b.summary.final_loss),
            });
        }
    }
    out
}

/// The markdown section, or nothing when no run appears on two backends.
pub fn section(pairs: &[BackendPair]) -> Option<String> {
    if pairs.is_empty() {
        return None;
    }
    let mut md = String::from(
        "## The same run on two backends\n\n| run | backend A | backend B | steps compared | largest relative loss \
         difference | final loss A | final loss B |\n|---|---|---|---:|---:|---:|---:|\n",
    );
    let num = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.6}"));
    for p in pairs {
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.2e} | {} | {} |",
            p.run,
            p.a,
            p.b,
            p.steps,
            p.max_rel_loss_diff,
            num(p.final_loss.0),
            num(p.final_loss.1)
        )
        .expect("string");
    }
    md.push_str("\nPer step: |loss A − loss B| / max(|loss A|, 1e-3); same seed, data and config.\n");
    Some(md)
}
