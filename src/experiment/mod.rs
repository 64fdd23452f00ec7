//! `mapo experiment`: runs an experiment file (model, data, methods, sweeps, seeds) and
//! writes a report that puts the methods side by side.

pub mod backends;
pub mod config;
pub mod curves;
pub mod evaluator;
pub mod jobs;
pub mod report;
pub mod runner;
pub mod toy;

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

/// How to run an experiment's runs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub dry_run: bool,
    /// Runs at once (default: the machine's cores).
    pub jobs: Option<usize>,
    /// Only this run, no report (how `--jobs` starts each run).
    pub only: Option<String>,
}

/// `mapo experiment FILE`: plans, runs what is not finished, writes the report.
pub fn run(file: &Path, overrides: &[String], device: Option<&str>, options: &RunOptions) -> Result<()> {
    let (base, runs) = config::load(file, overrides)?;
    if let Some(name) = &options.only {
        return runner::run_one(&base, &runs, name, device);
    }
    let dry_run = options.dry_run;
    let exp = runner::experiment_dir(&base);
    eprintln!("experiment {}: {} runs into {}", base.name, runs.len(), exp.display());
    for r in &runs {
        eprintln!("  {}", r.name);
    }
    if dry_run {
        return Ok(());
    }
    let t0 = Instant::now();
    let jobs = options.jobs.unwrap_or_else(jobs::cores).max(1);
    let how = runner::Invocation { file, overrides, device, jobs };
    let dirs = runner::run_all(&base, &runs, &how)?;
    let data = crate::experiment::report::collect(&dirs)?;
    crate::experiment::report::write(&exp, &data)?;
    note_runs_left_out(&exp, &dirs)?;
    append_to_report(
        &exp,
        &format!(
            "Wall time of this `mapo experiment` call: {:.1} s, up to {jobs} run(s) at once (`--jobs`); each run's \
             wall s is its own, measured while the others ran.",
            t0.elapsed().as_secs_f64()
        ),
    )?;
    let table = crate::experiment::report::table(&crate::experiment::report::rows(&data), &data);
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
    append_to_report(exp, &line)
}

fn append_to_report(exp: &Path, line: &str) -> Result<()> {
    let path = exp.join("report.md");
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&format!("\n{line}\n"));
    crate::models::io::write_atomic(&path, text.as_bytes())
}
