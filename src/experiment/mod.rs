//! `mapo experiment`: runs an experiment file (model, data, methods, sweeps, seeds) and
//! writes a report that puts the methods side by side.

pub mod config;
pub mod runner;
pub mod toy;
pub mod toy_eval;

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

/// `mapo experiment FILE`: plans, runs what is not finished, writes the report.
pub fn run(file: &Path, overrides: &[String], device: Option<&str>, dry_run: bool) -> Result<()> {
    let (base, runs) = config::load(file, overrides)?;
    let exp = runner::experiment_dir(&base);
    eprintln!("experiment {}: {} runs into {}", base.name, runs.len(), exp.display());
    for r in &runs {
        eprintln!("  {}", r.name);
    }
    if dry_run {
        return Ok(());
    }
    let t0 = Instant::now();
    let dirs = runner::run_all(&base, &runs, device)?;
    let data = crate::eval::report::collect(&dirs)?;
    crate::eval::report::write(&exp, &data)?;
    note_runs_left_out(&exp, &dirs)?;
    let table = crate::eval::report::table(&crate::eval::report::rows(&data));
    println!("{table}");
    println!(
        "experiment {} done in {:.1} s; report: {}",
        base.name,
        t0.elapsed().as_secs_f64(),
        exp.join("report.md").display()
    );
    Ok(())
}

/// Finished runs in the experiment's folder that this plan does not include (a narrower
/// `--set methods=...`, say) are named under the report rather than silently dropped.
fn note_runs_left_out(exp: &Path, planned: &[std::path::PathBuf]) -> Result<()> {
    let mut left: Vec<String> = std::fs::read_dir(exp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("summary.json").is_file() && !planned.contains(p))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if left.is_empty() {
        return Ok(());
    }
    left.sort();
    let line = format!(
        "Finished runs in this folder that this plan does not include (not in the table): {}. \
         `mapo report {}` shows every run.",
        left.join(", "),
        exp.display()
    );
    eprintln!("note: {line}");
    let path = exp.join("report.md");
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&format!("\n{line}\n"));
    crate::models::io::write_atomic(&path, text.as_bytes())
}
