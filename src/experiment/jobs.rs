//! `mapo experiment --jobs N`: independent runs at once, each in its own child process
//! (`mapo experiment FILE --only RUN`), so that each has its own peak memory, its own
//! device state and its share of the cores (`RAYON_NUM_THREADS`). The backend's numbers do
//! not depend on its thread count, so the results are those of a sequential run; one bar
//! per active run follows its `metrics.jsonl`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::config::PlannedRun;
use super::runner::Invocation;

struct Active {
    name: String,
    child: Child,
    bar: ProgressBar,
    metrics: PathBuf,
    log: PathBuf,
    t0: Instant,
}

/// The machine's cores (what `--jobs` defaults to).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn run_concurrently(exp: &Path, runs: &[&PlannedRun], how: &Invocation) -> Result<()> {
    let jobs = how.jobs.min(runs.len());
    let threads = (cores() / jobs).max(1);
    let logs = exp.join("_logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    eprintln!("{} runs, {jobs} at a time, {threads} thread(s) each; logs in {}", runs.len(), logs.display());
    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:32} {bar:24} {pos}/{len} steps [{elapsed_precise}] {msg}")
        .expect("template");
    let mut queue: VecDeque<&PlannedRun> = runs.iter().copied().collect();
    let mut active: Vec<Active> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    loop {
        while active.len() < jobs && failed.is_empty() {
            let Some(run) = queue.pop_front() else { break };
            let log = logs.join(format!("{}.log", run.name));
            let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let mut cmd = Command::new(std::env::current_exe().context("finding the mapo binary")?);
            cmd.arg("experiment").arg(how.file);
            for o in how.overrides {
                cmd.arg("--set").arg(o);
            }
            if let Some(d) = how.device {
                cmd.arg("--device").arg(d);
            }
            cmd.args(["--jobs", "1", "--only", &run.name])
                .env("RAYON_NUM_THREADS", threads.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(out);
            let child = cmd.spawn().with_context(|| format!("starting the run {}", run.name))?;
            let train = &run.config.train;
            let steps = train.get("steps").or_else(|| train.get("max_train_steps")).and_then(|s| s.as_integer());
            let steps = steps.unwrap_or(0) as u64;
            let bar = bars.add(ProgressBar::new(steps).with_style(style.clone()).with_prefix(run.name.clone()));
            let metrics = exp.join(&run.name).join("metrics.jsonl");
            active.push(Active { name: run.name.clone(), child, bar, metrics, log, t0: Instant::now() });
        }
        if active.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        let mut i = 0;
        while i < active.len() {
            let a = &mut active[i];
            let done = std::fs::read_to_string(&a.metrics).map_or(0, |t| t.lines().count());
            a.bar.set_position(done as u64);
            match a.child.try_wait()? {
                None => i += 1,
                Some(status) => {
                    let a = active.swap_remove(i);
                    let dt = a.t0.elapsed().as_secs_f64();
                    if status.success() {
                        a.bar.finish_with_message(format!("done in {dt:.1} s"));
                        let _ = bars.println(format!("{}: {dt:.1} s", a.name));
                    } else {
                        a.bar.abandon_with_message("failed");
                        let text = std::fs::read_to_string(&a.log).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(8).collect();
                        let tail: Vec<&str> = tail.into_iter().rev().collect();
                        failed.push(format!(
                            "{} ({status}; {}):\n    {}",
                            a.name,
                            a.log.display(),
                            tail.join("\n    ")
                        ));
                    }
                }
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} run(s) failed (the others finished; their results are kept):\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}
