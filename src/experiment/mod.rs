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
