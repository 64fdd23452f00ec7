//! `mapo experiment` and `mapo report` end to end on the built-in model with a few steps:
//! a 2-run sweep produces a report with both rows, and a rerun skips finished runs.

mod common;

use common::run_mapo;

fn write_experiment(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("sweep.toml");
    let text = format!(
        r#"
name = "sweep"
runs_dir = "{runs}"
methods = ["mapo"]
[model]
builtin = "toy"
[data]
generated = "style"
pairs_per_subject = 1
[pretrain]
steps = 2
batch_size = 4
[train]
steps = 2
batch_size = 2
[eval]
every = 1
seeds = 1
steps = 2
error_pairs = 4
[sweep]
"method_params.mapo.beta" = [0.1, 0.5]
"#,
        runs = dir.join("runs").display()
    );
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn sweep_writes_a_report_with_both_runs_and_rerun_skips_them() {
    let tmp = tempfile_dir("experiment");
    let file = write_experiment(&tmp);
    let out = run_mapo(&["experiment", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.matches("pretraining the toy model").count(), 1, "{stderr}");
    assert!(stderr.contains("reference: cached"), "the second run reuses the reference:\n{stderr}");
    let exp = tmp.join("runs").join("sweep");
    let report = std::fs::read_to_string(exp.join("report.md")).unwrap();
    for row in ["| mapo | beta=0.1 |", "| mapo | beta=0.5 |", "| reference | — |"] {
        assert!(report.contains(row), "missing row {row:?} in\n{report}");
    }
    for f in ["curves.png", "samples.png", "report.json"] {
        assert!(exp.join(f).is_file(), "{f} missing");
    }
    // Readable plots: the legend in a strip below the 420-pixel panels (not over the
    // curves), and a header band of prompt words above the sample grid's first row.
    let curves = image::open(exp.join("curves.png")).unwrap().to_rgb8();
    assert!(curves.height() > 420, "no legend strip: {}×{}", curves.width(), curves.height());
    let dark = |img: &image::RgbImage, rows: std::ops::Range<u32>, cols: std::ops::Range<u32>| {
        rows.flat_map(|y| cols.clone().map(move |x| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0[0] < 100).count()
    };
    assert!(dark(&curves, 421..curves.height(), 0..curves.width()) > 50, "the legend strip is empty");
    let grid = image::open(exp.join("samples.png")).unwrap().to_rgb8();
    assert!(dark(&grid, 0..40, 300..grid.width()) > 50, "no column headers above the samples");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 3);
    let evals = std::fs::read_to_string(exp.join("mapo-beta=0.1-s0").join("eval.jsonl")).unwrap();
    assert_eq!(evals.lines().count(), 3, "step 0 (reference), 1 and 2:\n{evals}");

    let summary = exp.join("mapo-beta=0.5-s0").join("summary.json");
    let before = std::fs::metadata(&summary).unwrap().modified().unwrap();
    let again = run_mapo(&["experiment", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert_eq!(stderr.matches("finished, skipped").count(), 2, "{stderr}");
    assert_eq!(std::fs::metadata(&summary).unwrap().modified().unwrap(), before);

    // Other settings for the same run names are refused, not reported as these runs.
    let changed = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["experiment", file.to_str().unwrap(), "--set", "train.steps=3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(!changed.status.success() && stderr.contains("made with other settings (changed: train)"), "{stderr}");
    // A method list that drops a run does not change the runs that remain.
    let fewer =
        run_mapo(&["experiment", file.to_str().unwrap(), "--set", "sweep={\"method_params.mapo.beta\" = [0.5]}"]);
    assert!(String::from_utf8_lossy(&fewer.stderr).contains("finished, skipped"));
    let report = std::fs::read_to_string(exp.join("report.md")).unwrap();
    assert!(report.contains("does not include (not in the table): mapo-beta=0.1-s0"), "{report}");

    // An interrupted run (no summary yet, a checkpoint on disk) resumes from it.
    std::fs::remove_file(exp.join("mapo-beta=0.1-s0").join("summary.json")).unwrap();
    let resumed = run_mapo(&["experiment", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("resuming from") && stderr.contains("checkpoint-2"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("mapo-beta=0.1-s0").join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["eval"]["step"], 2, "the resumed run is scored: {summary}");

    // `mapo report` rebuilds the same table from the folder.
    let other = tmp.join("rebuilt");
    let rep = run_mapo(&["report", exp.to_str().unwrap(), "--out", other.to_str().unwrap()]);
    assert!(rep.status.success(), "{}", String::from_utf8_lossy(&rep.stderr));
    let rebuilt = std::fs::read_to_string(other.join("report.md")).unwrap();
    assert!(rebuilt.contains("| mapo | beta=0.5 |"), "{rebuilt}");
}

/// `--jobs 2` (each run in its own process, one thread each) gives the results of `--jobs 1`
/// bit for bit: the same evaluations, weights and table (all but the wall time, step time
/// and memory columns, which are measured).
#[test]
fn concurrent_runs_give_the_sequential_results() {
    let mut tables = Vec::new();
    let mut dirs = Vec::new();
    for jobs in ["1", "2"] {
        let tmp = tempfile_dir(&format!("experiment-jobs{jobs}"));
        let file = write_experiment(&tmp);
        let out = run_mapo(&["experiment", file.to_str().unwrap(), "--jobs", jobs]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        if jobs == "2" {
            assert!(stderr.contains("2 runs, 2 at a time, "), "{stderr}");
        }
        let exp = tmp.join("runs").join("sweep");
        let report = std::fs::read_to_string(exp.join("report.md")).unwrap();
        assert!(report.contains(&format!("up to {jobs} run(s) at once")), "{report}");
        let rows: Vec<String> = report
            .lines()
            .filter(|l| l.starts_with("| mapo") || l.starts_with("| reference"))
            .map(|l| l.split('|').take(10).collect::<Vec<_>>().join("|"))
            .collect();
        assert_eq!(rows.len(), 3, "{report}");
        tables.push(rows);
        dirs.push(exp);
    }
    assert_eq!(tables[0], tables[1]);
    for run in ["mapo-beta=0.1-s0", "mapo-beta=0.5-s0"] {
        for f in ["eval.jsonl", "unet/diffusion_pytorch_model.safetensors", "samples.safetensors"] {
            let (a, b) =
                (std::fs::read(dirs[0].join(run).join(f)).unwrap(), std::fs::read(dirs[1].join(run).join(f)).unwrap());
            assert!(a == b, "{run}/{f} differs between --jobs 1 and --jobs 2");
        }
    }
    assert!(dirs[1].join("_logs/mapo-beta=0.1-s0.log").is_file());
}

#[test]
fn unknown_keys_and_bad_sweeps_are_errors() {
    let tmp = tempfile_dir("experiment-errors");
    let file = write_experiment(&tmp);
    let mapo = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_mapo")).args(args).output().unwrap();
    let out = mapo(&["experiment", file.to_str().unwrap(), "--set", "train.stepz=3", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("stepz"), "{stderr}");
    let out = mapo(&["experiment", file.to_str().unwrap(), "--set", "methods=[\"orpo\"]", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("orpo"), "{stderr}");
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mapo-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn shipped_experiment_files_plan() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mapo = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_mapo")).args(args).output().unwrap();
    let plan = |file: &str, extra: &[&str]| {
        let path = format!("{root}/experiments/{file}");
        let mut args = vec!["experiment", path.as_str(), "--dry-run"];
        args.extend_from_slice(extra);
        let out = mapo(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{file}: {stderr}");
        stderr.lines().filter(|l| l.starts_with("  ")).map(|l| l.trim().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(
        plan("toy-reference-mismatch.toml", &[]),
        [
            "sft-generated=style-s0",
            "dpo-generated=style-s0",
            "mapo-generated=style-s0",
            "sft-generated=colour-s0",
            "dpo-generated=colour-s0",
            "mapo-generated=colour-s0"
        ]
    );
    assert_eq!(plan("toy-flow-mismatch.toml", &[]).len(), 6);
    // β sweeps multiply only their own method's runs: 3 βs × 2 seeds per method.
    let ablation = plan("toy-ablation-beta.toml", &[]);
    assert_eq!(ablation.len(), 12, "{ablation:?}");
    assert!(ablation.contains(&"dpo-beta=5000.0-s1".to_string()), "{ablation:?}");
    // Two swept keys with the same last name keep their whole paths: no run is dropped.
    let both = plan(
        "toy-ablation-beta.toml",
        &[
            "--set",
            "sweep={\"train.optimizer.lr\" = [1e-4, 2e-4], \"pretrain.lr\" = [1e-3, 2e-3]}",
            "--set",
            "seeds=[0]",
        ],
    );
    assert_eq!(both.len(), 8, "{both:?}");
    assert!(both.contains(&"mapo-pretrain.lr=0.002-train.optimizer.lr=0.0002-s0".to_string()), "{both:?}");
    let model = format!("model.path={root}/tests/fixtures/tiny-sdxl");
    let sdxl = plan("sdxl-pick-style-cartoon.toml", &["--set", &model, "--set", "data.parquet=/nonexistent"]);
    assert_eq!(sdxl, ["sft-s0", "dpo-s0", "mapo-s0"]);
    // The flow sweep: 3 DPO βs, 3 MaPO Ts × 2 βs; the SD3.5 job on a (tiny) SD3.5 folder.
    assert_eq!(plan("toy-flow-sweep.toml", &[]).len(), 9);
    let sd3 = format!("model.path={root}/tests/fixtures/tiny-sd35");
    let sd35 = plan("sd35m-pickapic.toml", &["--set", &sd3, "--set", "data.parquet=/nonexistent"]);
    assert_eq!(sd35, ["sft-s0", "dpo-s0", "mapo-s0"]);
    let flux = format!("model.path={root}/tests/fixtures/tiny-flux-dev");
    let flux = plan("flux-dev-pickapic.toml", &["--set", &flux, "--set", "data.parquet=/nonexistent"]);
    assert_eq!(flux, ["sft-s0", "dpo-s0", "mapo-s0"]);
}

/// The same experiment on two devices (flex, and MAPO_TEST_DEVICE when the wgpu tests
/// run) side by side: `mapo report` keeps the two folders' runs apart.
#[test]
fn report_puts_two_runs_of_one_experiment_side_by_side() {
    let tmp = tempfile_dir("two-devices");
    let file = write_experiment(&tmp);
    let other = common::device_name();
    for (dir, device) in [("a", "flex"), ("b", other.as_str())] {
        let runs = format!("runs_dir=\"{}\"", tmp.join(dir).display());
        run_mapo(&["experiment", file.to_str().unwrap(), "--device", device, "--set", &runs, "--set", "sweep={}"]);
    }
    let (a, b) = (tmp.join("a").join("sweep"), tmp.join("b").join("sweep"));
    let out = tmp.join("both");
    run_mapo(&["report", a.to_str().unwrap(), b.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let rows: Vec<&str> = report.lines().filter(|l| l.contains("| mapo |")).collect();
    assert_eq!(rows.len(), 2, "one row per folder, not one averaged row:\n{report}");
    assert!(rows[0].starts_with(&format!("| {} |", a.display())), "{report}");
    assert!(rows[1].contains(&format!("| {other} f32 |")), "{report}");
    assert!(rows.iter().all(|r| r.contains("| 1 |")), "each row is one seed:\n{report}");
    // On two different backends the same run is also compared step by step.
    if other != "flex" {
        let line =
            report.lines().find(|l| l.starts_with("| mapo-s0 | flex f32 |")).unwrap_or_else(|| panic!("{report}"));
        let diff: f64 = line.split('|').nth(5).unwrap().trim().parse().unwrap();
        eprintln!("{line}");
        // Measured 1.5e-5 on lavapipe: each backend also pretrains its own toy reference.
        assert!(diff <= 1e-4, "mapo on flex and {other}: {diff:.2e}");
    }
}

/// A diffusers model with a prompt suite and a reward model: the runs and the model before
/// fine-tuning (`reference`) are scored during and after training, the report's table has
/// a PickScore column, and the reference's score is `mapo eval`'s for the base model on
/// the same suite and settings.
#[test]
fn a_diffusers_experiment_is_scored_by_reward_models_in_the_same_table() {
    let dir = tempfile_dir("experiment-suite");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let (model, parquet, clip) =
        (fixtures.join("tiny-sdxl"), fixtures.join("parquet/pairs.parquet"), fixtures.join("tiny-clip"));
    let device = common::device_name();
    let file = dir.join("suite.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"suite\"\nruns_dir = {runs:?}\nmethods = [\"sft\"]\n[model]\npath = {model:?}\n[data]\n\
             parquet = {parquet:?}\n[data.transform]\nresolution = 32\n[train]\nsteps = 2\nbatch_size = 2\n\
             device = \"{device}\"\n[train.optimizer]\nlr = 0.05\n[eval]\nevery = 1\nseeds = 2\nsteps = 2\n\
             guidance = 4.0\nsize = 32\nprompts = {parquet:?}\nmax_prompts = 2\n[eval.scorers]\npickscore = {clip:?}\n",
            runs = dir.join("runs"),
        ),
    )
    .unwrap();
    let out = run_mapo(&["experiment", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let exp = dir.join("runs").join("suite");
    let report = std::fs::read_to_string(exp.join("report.md")).unwrap();
    assert!(
        report.contains("PickScore ↑") && report.contains("| reference |") && report.contains("| sft |"),
        "{report}\n{stderr}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(exp.join("sft-s0/eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(lines.iter().all(|l| l["pickscore"].is_f64()), "{lines:?}");
    assert!(exp.join("sft-s0/samples/00001-s1.png").is_file(), "the last evaluation's images are kept");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("reference/summary.json")).unwrap()).unwrap();
    let before = reference["eval"]["pickscore"].as_f64().unwrap();
    assert_eq!(lines[0]["pickscore"].as_f64().unwrap(), before, "step 0 is the reference's line");
    // The fine-tuned model makes other images (lr 0.05 on a random tiny model).
    assert_ne!(lines[2]["pickscore"].as_f64().unwrap(), before);

    let eval_out = dir.join("eval");
    let eval = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["eval", "--model", model.to_str().unwrap(), "--prompts", parquet.to_str().unwrap()])
        .args(["--max-prompts", "2", "--seeds", "2", "--steps", "2", "--guidance", "4", "--size", "32"])
        .args(["--scorer", &format!("pickscore={}", clip.display()), "--device", &device])
        .args(["--out", eval_out.to_str().unwrap()])
        .env("MAPO_QUIET_DEVICE", "1")
        .output()
        .unwrap();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval_out.join("eval.json")).unwrap()).unwrap();
    let base = json[0]["variants"][0]["mean"]["value"].as_f64().unwrap();
    // The same images (noise per prompt and seed, f32 both): the same mean but for the
    // order of the sum.
    assert!((base - before).abs() <= 1e-9 * before.abs().max(1.0), "mapo eval {base} vs experiment {before}");

    // The runs gone, the reference kept: scoring it with other settings is refused.
    std::fs::remove_dir_all(exp.join("sft-s0")).unwrap();
    let other = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["experiment", file.to_str().unwrap(), "--set", "eval.max_prompts=1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(
        !other.status.success() && stderr.contains("reference was scored with other settings (changed: eval)"),
        "{stderr}"
    );

    // A suite without scorers, an unknown scorer: errors at plan time.
    for (set, want) in [("eval.scorers={}", "give both prompts"), ("eval.scorers={imagereward=\"x\"}", "imagereward")] {
        let bad = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
            .args(["experiment", file.to_str().unwrap(), "--dry-run", "--set", set])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success() && stderr.contains(want), "{set}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The built-in model trains with flow matching end to end: its reference is pretrained with
/// the flow objective (another cached reference than the ε one), every run's config says so,
/// and the report names the objective.
#[test]
fn the_toy_trains_with_the_flow_objective() {
    let tmp = tempfile_dir("experiment-flow");
    let file = write_experiment(&tmp);
    let flow = ["--set", "train.objective=\"flow\"", "--set", "train.flow.shift=1.0", "--set", "sweep={}"];
    let mut args = vec!["experiment", file.to_str().unwrap()];
    args.extend(flow);
    let out = run_mapo(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let exp = tmp.join("runs").join("sweep");
    let report = std::fs::read_to_string(exp.join("report.md")).unwrap();
    assert!(report.contains("Objective: flow matching"), "{report}");
    let config = std::fs::read_to_string(exp.join("mapo-s0").join("config.toml")).unwrap();
    assert!(config.contains("objective = \"flow\"") && config.contains("shift = 1.0"), "{config}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exp.join("mapo-s0").join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["objective"], "flow");
    let loss = summary["final_loss"].as_f64().unwrap();
    assert!(loss.is_finite(), "{summary}");
    let cached: Vec<_> = std::fs::read_dir(tmp.join("runs").join("_cache")).unwrap().collect();
    let reference = cached.iter().flatten().find(|e| e.file_name().to_string_lossy().starts_with("toy-reference"));
    let info = std::fs::read_to_string(reference.unwrap().path().join("reference.json")).unwrap();
    assert!(info.contains("\"objective\": \"flow\""), "the reference is pretrained with flow: {info}");

    // Misspelt flow keys and a pretraining objective that contradicts the runs' are refused.
    let run_mapo = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_mapo")).args(args).output().unwrap();
    let bad = run_mapo(&["experiment", file.to_str().unwrap(), "--dry-run", "--set", "train.flow.shfit=1.0"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("shfit"));
    let both = run_mapo(&["experiment", file.to_str().unwrap(), "--dry-run", "--set", "pretrain.objective=\"flow\""]);
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(!both.status.success() && stderr.contains("[pretrain] objective"), "{stderr}");
}
