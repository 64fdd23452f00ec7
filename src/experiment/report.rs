//! The comparison report of a set of runs: `report.md` (one table, a row per method and
//! varied setting, mean ± std across seeds, best value per column in bold), `report.json`,
//! `curves.png` and `samples.png`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::runner::{RunSummary, step_stats};
use crate::eval::metrics::{self, Better, Metrics};
use crate::models::io::write_atomic;
use crate::objective::ObjectiveName;
use crate::util::read_jsonl;

/// A finished run as read from its folder.
pub struct RunData {
    pub dir: PathBuf,
    pub summary: RunSummary,
    /// metrics.jsonl (training loss per step).
    pub metrics: Vec<serde_json::Value>,
    /// eval.jsonl (scores against steps), one entry per step.
    pub evals: Vec<Metrics>,
}

/// Reads run folders; a folder without `summary.json` is searched one level down (an
/// experiment folder), so `mapo report runs/exp-a runs/exp-b` works.
pub fn collect(dirs: &[PathBuf]) -> Result<Vec<RunData>> {
    let mut out = Vec::new();
    for dir in dirs {
        if dir.join("summary.json").is_file() {
            out.push(read_run(dir)?);
            continue;
        }
        if dir.join("config.toml").is_file() && dir.join("metrics.jsonl").is_file() {
            out.push(read_train_run(dir)?);
            continue;
        }
        let mut subs: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("summary.json").is_file())
            .collect();
        if subs.is_empty() {
            bail!(
                "{}: neither a run (summary.json, or a `mapo train` folder's config.toml + metrics.jsonl) nor a \
                 folder of runs",
                dir.display()
            );
        }
        // References first, then by name.
        subs.sort_by_key(|p| (!p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("reference")), p.clone()));
        for s in subs {
            out.push(read_run(&s)?);
        }
    }
    Ok(out)
}

/// A `mapo train` output folder, summarised from its config and metrics (no evaluation;
/// wall time is the sum of the logged step times).
fn read_train_run(dir: &Path) -> Result<RunData> {
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: crate::train::config::TrainConfig =
        toml::from_str(&text).with_context(|| format!("{} is not a mapo train config", path.display()))?;
    let metrics = read_jsonl(&dir.join("metrics.jsonl"));
    let wall_s = metrics.iter().filter_map(|m| m["step_time_s"].as_f64()).sum();
    let (median_step, peak) = step_stats(&metrics);
    let summary = RunSummary {
        experiment: "train".into(),
        run: dir.file_name().map_or("run".into(), |n| n.to_string_lossy().into_owned()),
        method: config.method.clone(),
        varied: BTreeMap::new(),
        seed: config.seed,
        backend: config.device.clone().unwrap_or_else(|| "default".into()),
        dtype: config.dtype.clone(),
        steps: metrics.len(),
        wall_s,
        step_time_s: median_step,
        peak_memory_bytes: peak,
        memory_kind: if peak.is_some() { "device" } else { "none" }.into(),
        final_loss: metrics.last().and_then(|m| m["loss"].as_f64()),
        eval: None,
        objective: config.objective,
    };
    Ok(RunData { dir: dir.to_path_buf(), summary, metrics, evals: Vec::new() })
}

fn read_run(dir: &Path) -> Result<RunData> {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let summary: RunSummary =
        serde_json::from_str(&text).with_context(|| format!("{} is not a run summary", path.display()))?;
    let mut evals: BTreeMap<usize, Metrics> = BTreeMap::new();
    for v in read_jsonl(&dir.join("eval.jsonl")) {
        if let Ok(m) = serde_json::from_value::<Metrics>(v) {
            evals.insert(m.step, m); // a resumed run may repeat a step: the last one wins
        }
    }
    Ok(RunData {
        dir: dir.to_path_buf(),
        summary,
        metrics: read_jsonl(&dir.join("metrics.jsonl")),
        evals: evals.into_values().collect(),
    })
}

type Getter = Box<dyn Fn(&RunSummary) -> Option<f64>>;

struct Column {
    title: String,
    key: String,
    better: Better,
    get: Getter,
    digits: usize,
}

impl Column {
    fn fixed(title: &str, key: &str, better: Better, digits: usize, get: fn(&RunSummary) -> Option<f64>) -> Self {
        Self { title: title.into(), key: key.into(), better, get: Box::new(get), digits }
    }
}

/// The evaluation metrics any run reports (by name: the toy's readings, reward models'
/// scores), then loss, time and memory.
fn columns(runs: &[RunData]) -> Vec<Column> {
    let names = metrics::present(runs.iter().filter_map(|r| r.summary.eval.as_ref()));
    let mut out: Vec<Column> = names
        .into_iter()
        .map(|name| {
            let info = metrics::info(&name);
            let title = if info.title.is_empty() { name.clone() } else { info.title.to_string() };
            let key = name.clone();
            let get = move |s: &RunSummary| s.eval.as_ref().and_then(|e| e.get(&key));
            Column { title, key: name, better: info.better, get: Box::new(get), digits: info.digits }
        })
        .collect();
    out.extend([
        Column::fixed("final loss", "final_loss", Better::Neither, 4, |s| s.final_loss),
        Column::fixed("wall s ↓", "wall_s", Better::Lower, 1, |s| (s.steps > 0).then_some(s.wall_s)),
        Column::fixed("step ms ↓", "step_ms", Better::Lower, 1, |s| s.step_time_s.map(|t| t * 1e3)),
        Column::fixed("peak MB ↓", "peak_mb", Better::Lower, 0, |s| s.peak_memory_bytes.map(|b| b as f64 / 1e6)),
    ]);
    out
}

/// Mean and sample standard deviation (0 for one value).
fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

#[derive(Serialize)]
pub struct Row {
    /// The folder holding the runs (an experiment folder): runs from different folders
    /// are never averaged together.
    pub origin: String,
    pub method: String,
    pub varied: BTreeMap<String, String>,
    pub backend: String,
    pub dtype: String,
    /// Run folders.
    pub runs: Vec<String>,
    pub seeds: Vec<u64>,
    /// Column key → (mean, std, n).
    pub values: BTreeMap<String, (f64, f64, usize)>,
}

/// Groups runs that differ only in their seed.
pub fn rows(runs: &[RunData]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for r in runs {
        let s = &r.summary;
        let origin = r.dir.parent().map(|p| p.display().to_string()).unwrap_or_default();
        let dir = r.dir.display().to_string();
        let same = |row: &Row| {
            row.origin == origin
                && row.method == s.method
                && row.varied == s.varied
                && row.backend == s.backend
                && row.dtype == s.dtype
        };
        match rows.iter_mut().find(|row| same(row)) {
            Some(row) => {
                row.runs.push(dir);
                row.seeds.push(s.seed);
            }
            None => rows.push(Row {
                origin,
                method: s.method.clone(),
                varied: s.varied.clone(),
                backend: s.backend.clone(),
                dtype: s.dtype.clone(),
                runs: vec![dir],
                seeds: vec![s.seed],
                values: BTreeMap::new(),
            }),
        }
    }
    let columns = columns(runs);
    for row in &mut rows {
        let members: Vec<&RunSummary> =
            runs.iter().filter(|r| row.runs.contains(&r.dir.display().to_string())).map(|r| &r.summary).collect();
        for c in &columns {
            let v: Vec<f64> = members.iter().filter_map(|s| (c.get)(s)).filter(|v| v.is_finite()).collect();
            if !v.is_empty() {
                let (m, sd) = mean_std(&v);
                row.values.insert(c.key.clone(), (m, sd, v.len()));
            }
        }
    }
    rows
}

fn params_label(varied: &BTreeMap<String, String>) -> String {
    if varied.is_empty() {
        "—".into()
    } else {
        varied.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    }
}

/// The markdown table (best mean per column in bold; the reference rows are not ranked).
pub fn table(rows: &[Row], runs: &[RunData]) -> String {
    let columns = columns(runs);
    // A "from" column only when the runs come from several folders.
    let several = rows.iter().any(|r| r.origin != rows[0].origin);
    let mut out = String::from(if several {
        "| from | method | varied | backend | seeds |"
    } else {
        "| method | varied | backend | seeds |"
    });
    for c in &columns {
        write!(out, " {} |", c.title).expect("string");
    }
    out.push_str(if several { "\n|---|---|---|---|---|" } else { "\n|---|---|---|---|" });
    out.push_str(&"---:|".repeat(columns.len()));
    out.push('\n');
    let best: Vec<Option<f64>> = columns
        .iter()
        .map(|c| {
            let means =
                rows.iter().filter(|r| r.method != "reference").filter_map(|r| r.values.get(&c.key).map(|v| v.0));
            match c.better {
                Better::Higher => means.reduce(f64::max),
                Better::Lower => means.reduce(f64::min),
                Better::Neither => None,
            }
        })
        .collect();
    for r in rows {
        if several {
            write!(out, "| {} ", r.origin).expect("string");
        }
        write!(out, "| {} | {} | {} {} | {} |", r.method, params_label(&r.varied), r.backend, r.dtype, r.seeds.len())
            .expect("string");
        for (c, b) in columns.iter().zip(&best) {
            let cell = match r.values.get(&c.key) {
                None => "—".to_string(),
                Some(&(m, sd, n)) => {
                    let text = if n > 1 {
                        format!("{m:.d$} ± {sd:.d$}", d = c.digits)
                    } else {
                        format!("{m:.d$}", d = c.digits)
                    };
                    let is_best =
                        r.method != "reference" && b.is_some_and(|b| (b - m).abs() <= 1e-12 * b.abs().max(1.0));
                    if is_best { format!("**{text}**") } else { text }
                }
            };
            write!(out, " {cell} |").expect("string");
        }
        out.push('\n');
    }
    out
}

/// Says which objective the runs trained with, when it is not SDXL's ε-prediction (or
/// when runs of both are side by side).
fn objective_line(runs: &[RunData]) -> Option<String> {
    let mut names: Vec<ObjectiveName> = runs.iter().map(|r| r.summary.objective).collect();
    names.sort_by_key(|n| n.as_str());
    names.dedup();
    if names.iter().all(ObjectiveName::is_epsilon) {
        return None;
    }
    let describe = |n: &ObjectiveName| match n {
        ObjectiveName::Epsilon => "ε-prediction (DDPM schedule)",
        ObjectiveName::Flow => "flow matching (velocity target ε − x₀, x_σ = (1−σ)·x₀ + σ·ε)",
    };
    Some(format!("Objective: {}.", names.iter().map(describe).collect::<Vec<_>>().join("; ")))
}

/// Writes report.md, report.json, curves.png and samples.png into `out`.
pub fn write(out: &Path, runs: &[RunData]) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let rows = rows(runs);
    let plotted = super::curves::curves(&out.join("curves.png"), runs)?;
    let grid = super::toy::grid::samples(&out.join("samples.png"), runs)?;
    let mut md = String::new();
    let names: Vec<&str> = {
        let mut n: Vec<&str> = runs.iter().map(|r| r.summary.experiment.as_str()).collect();
        n.dedup();
        n
    };
    writeln!(md, "# Report: {}\n", names.join(", "))?;
    if let Some(line) = objective_line(runs) {
        writeln!(md, "{line}\n")?;
    }
    writeln!(md, "{}", table(&rows, runs))?;
    let shown = metrics::present(runs.iter().filter_map(|r| r.summary.eval.as_ref()));
    let meanings: Vec<&str> = shown.iter().map(|k| metrics::info(k).meaning).filter(|m| !m.is_empty()).collect();
    let mut legend = meanings.join("; ");
    if !legend.is_empty() {
        legend.push_str("; ");
    }
    writeln!(
        md,
        "{legend}step ms: median optimizer step (online runs: median iteration, its sampling, scoring and updates); peak MB: device memory where the backend reports it, else the \
         process's peak RSS during the run. `reference` rows: the model before fine-tuning. Values are mean ± std \
         over seeds.\n"
    )?;
    if plotted {
        writeln!(md, "![curves](curves.png)\n")?;
    }
    if let Some(prompts) = grid {
        writeln!(md, "![samples](samples.png)\n")?;
        writeln!(
            md,
            "samples.png: rows = runs (first seed), columns = prompts (first sampling seed): {}.\n",
            prompts.join("; ")
        )?;
    }
    let backend_pairs = super::backends::compare(runs);
    if let Some(section) = super::backends::section(&backend_pairs) {
        writeln!(md, "{section}")?;
    }
    writeln!(md, "Runs: {}", runs.iter().map(|r| r.dir.display().to_string()).collect::<Vec<_>>().join(", "))?;
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    let json = serde_json::json!({
        "rows": rows,
        "backends": backend_pairs,
        "runs": runs.iter().map(|r| serde_json::json!({"dir": r.dir, "summary": r.summary, "evals": r.evals})).collect::<Vec<_>>(),
    });
    write_atomic(&out.join("report.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    Ok(())
}
