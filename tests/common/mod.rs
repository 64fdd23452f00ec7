//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{DType, Device, Tensor};
use mapo::models::io::SafeTensorFiles;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The name of the backend under test: `MAPO_TEST_DEVICE` (flex by default; `wgpu` in the
/// wgpu CI job).
pub fn device_name() -> String {
    std::env::var("MAPO_TEST_DEVICE").unwrap_or_else(|_| "flex".into())
}

/// The backend under test.
pub fn device() -> Device {
    mapo::device::select(Some(&device_name())).expect("test device").device
}

pub fn open(name: &str) -> SafeTensorFiles {
    SafeTensorFiles::open_file(&fixtures().join(name)).expect("fixture file")
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// max |a - b| / max |b|: the error relative to the reference output's magnitude.
pub fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    let diff = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff.is_finite(), "non-finite output");
    diff / scale
}

#[track_caller]
pub fn assert_close<const D: usize>(what: &str, got: Tensor<D>, want: Tensor<D>, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let err = rel_err(&to_vec(got), &to_vec(want));
    eprintln!("{what}: relative error {err:.3e} (tolerance {tol:.0e})");
    assert!(err <= tol, "{what}: relative error {err:.3e} exceeds {tol:.0e}");
}

/// `model`'s prediction for the inputs `<case>.sample`, `.timestep`,
/// `.encoder_hidden_states`, `.text_embeds`, `.time_ids` of a fixture file (no prefix
/// when `case` is empty).
pub fn run_unet_case(
    model: &mapo::models::unet::UNet2DConditionModel,
    cases: &SafeTensorFiles,
    case: &str,
    device: &Device,
) -> Tensor<4> {
    let f = |n: &str| if case.is_empty() { n.to_string() } else { format!("{case}.{n}") };
    let cond = mapo::models::unet::TextTime {
        text_embeds: cases.float::<2>(&f("text_embeds"), device, DType::F32).unwrap(),
        time_ids: cases.float::<2>(&f("time_ids"), device, DType::F32).unwrap(),
    };
    model.forward(
        cases.float::<4>(&f("sample"), device, DType::F32).unwrap(),
        cases.int::<1>(&f("timestep"), device).unwrap(),
        cases.float::<3>(&f("encoder_hidden_states"), device, DType::F32).unwrap(),
        Some(&cond),
    )
}

/// Runs the `mapo` binary, whatever its outcome (no backtrace, no device banner).
pub fn mapo_quiet(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env("MAPO_QUIET_DEVICE", "1")
        .output()
        .unwrap()
}

/// Runs the `mapo` binary and asserts that it succeeded.
pub fn run_mapo(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mapo")).args(args).output().unwrap();
    assert!(out.status.success(), "mapo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A 3-step LoRA run (rank 2, alpha 4) of `method` on synthetic pairs with latents `size`
/// for the tiny pipeline, in a fresh `dir`; returns the run's output folder.
pub fn tiny_lora_run(dir: &std::path::Path, method: &str, lr: &str, size: &str) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let model = fixtures().join("tiny-sdxl");
    let pairs = dir.join("pairs.safetensors");
    run_mapo(&[
        "make-pairs",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        "4",
        "--size",
        size,
        "--out",
        pairs.to_str().unwrap(),
    ]);
    let config = dir.join("lora.toml");
    let out = dir.join("run");
    let device = device_name();
    std::fs::write(
        &config,
        format!(
            "model = {model:?}\ndata = {pairs:?}\noutput_dir = {out:?}\nmethod = \"{method}\"\nsteps = 3\nbatch_size = 2\n\
             device = \"{device}\"\n[lora]\nrank = 2\nalpha = 4\n[optimizer]\nlr = {lr}\n"
        ),
    )
    .unwrap();
    run_mapo(&["train", "--config", config.to_str().unwrap()]);
    out
}

/// `mapo forward COMPONENT` on the tiny fixture pipeline (flex), whatever its outcome.
pub fn forward_tiny(component: &str, inputs: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    let model = fixtures().join("tiny-sdxl");
    std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["forward", component, "--device", "flex", "--model", model.to_str().unwrap()])
        .args(["--inputs", inputs.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .env("RUST_BACKTRACE", "0")
        .env("MAPO_QUIET_DEVICE", "1")
        .output()
        .unwrap()
}

/// `mapo cache` of `data` for the tiny fixture pipeline at 32² (flex), whatever its outcome.
pub fn cache_tiny(data: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let model = fixtures().join("tiny-sdxl");
    std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["cache", "--device", "flex", "--model", model.to_str().unwrap(), "--resolution", "32"])
        .args(["--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .env("MAPO_QUIET_DEVICE", "1")
        .output()
        .unwrap()
}

/// Rewrites one tensor of a safetensors file in place (the others unchanged).
pub fn rewrite_tensor(
    path: &std::path::Path,
    name: &str,
    f: impl Fn(&burn::tensor::TensorData) -> burn::tensor::TensorData,
) {
    let file = SafeTensorFiles::open_file(path).unwrap();
    let tensors: Vec<(String, burn::tensor::TensorData)> = file
        .names()
        .map(|n| {
            let data = file.get(n).unwrap().to_data_any().unwrap();
            (n.to_string(), if n == name { f(&data) } else { data })
        })
        .collect();
    drop(file);
    mapo::models::io::write_tensors(path, tensors).unwrap();
}

/// A run's metrics.jsonl lines without the fields that differ between any two runs of the
/// same math (timings and memory).
pub fn metric_lines(run: &std::path::Path) -> Vec<serde_json::Value> {
    const TIMING: [&str; 8] = [
        "step_time_s",
        "samples_per_s",
        "memory_reserved_bytes",
        "peak_memory_reserved_bytes",
        "peak_rss_bytes",
        "sample_s",
        "train_s",
        "wall_s",
    ];
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_else(|e| panic!("{}: {e}", run.join("metrics.jsonl").display()))
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            for k in TIMING {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

/// The SD3.5 transformer's inputs of `sd3_transformer_cases.safetensors` case 0, as the
/// `mapo forward transformer` input file `path`.
pub fn write_sd35_case0(path: &std::path::Path) {
    let cases = open("sd3_transformer_cases.safetensors");
    let names = ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"];
    let tensors = names
        .iter()
        .map(|n| (n.to_string(), cases.get(&format!("sd35.case0.{n}")).unwrap().to_data_any().unwrap()))
        .collect();
    mapo::models::io::write_tensors(path, tensors).unwrap();
}

/// `mapo forward transformer --model MODEL --inputs INP --out OUT [--lora F]` on the test
/// device, whatever its outcome.
pub fn forward_transformer(
    model: &std::path::Path,
    inp: &std::path::Path,
    out: &std::path::Path,
    lora: Option<&std::path::Path>,
) -> std::process::Output {
    let device = device_name();
    let mut args = vec!["forward", "transformer", "--model", model.to_str().unwrap(), "--device", &device];
    args.extend(["--inputs", inp.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    if let Some(l) = lora {
        args.extend(["--lora", l.to_str().unwrap()]);
    }
    mapo_quiet(&args)
}

pub fn values(f: &SafeTensorFiles, name: &str) -> Vec<f32> {
    f.get(name).unwrap_or_else(|| panic!("no {name}")).to_data().unwrap().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// `mapo forward train-step` (2 steps, lr 1e-3) on the fixture `<case>.safetensors` of a flow
/// family (docs/design.md §2b) with its input tensors `names`, against the PyTorch steps'
/// losses and every parameter after them (weights within 1e-4 of each tensor's max |w|;
/// updates within `update_tol` of the largest update). Measured values print with --nocapture.
pub fn run_flow_train_case(
    case: &str,
    folder: &str,
    names: &[&str],
    method: &str,
    args: &[&str],
    loss_tol: f32,
    update_tol: f32,
) {
    run_flow_train_case_with(case, folder, names, method, args, [loss_tol, 1e-4, update_tol])
}

/// [`run_flow_train_case`] with its three tolerances: loss, weights, update.
pub fn run_flow_train_case_with(
    case: &str,
    folder: &str,
    names: &[&str],
    method: &str,
    args: &[&str],
    [loss_tol, weight_tol, update_tol]: [f32; 3],
) {
    let fixture = open(&format!("{case}.safetensors"));
    let dir = std::env::temp_dir().join(format!("mapo-flow-train-{case}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inp = dir.join("in.safetensors");
    let tensors = names.iter().map(|n| (n.to_string(), fixture.get(n).unwrap().to_data_any().unwrap())).collect();
    mapo::models::io::write_tensors(&inp, tensors).unwrap();
    let out = dir.join("out.safetensors");
    let model = fixtures().join(folder);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["forward", "train-step", "--method", method, "--device", &device_name()])
        .args(["--model", model.to_str().unwrap(), "--inputs", inp.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--lr", "1e-3", "--steps", "2"])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let got = SafeTensorFiles::open_file(&out).unwrap();

    let (loss, want_loss) = (values(&got, "loss"), values(&fixture, "expected.loss"));
    assert_eq!(loss.len(), 2);
    for (g, w) in loss.iter().zip(&want_loss) {
        eprintln!("{case}: loss {g:e} vs {w:e}");
        assert!((g - w).abs() <= loss_tol * w.abs(), "{case}: loss {g} vs {w}");
    }
    let base = SafeTensorFiles::open_component(&model.join("transformer"), &["diffusion_pytorch_model"]).unwrap();
    let keys: Vec<String> =
        fixture.names().filter_map(|n| n.strip_prefix("expected.after.")).map(String::from).collect();
    // The largest update of any tensor: near-cancelling gradients of small tensors show f32
    // noise relative to their own tiny update, the step as a whole must agree.
    let mut largest = 0f32;
    let mut deltas = Vec::new();
    let mut worst_weight = (0f32, String::new());
    for key in &keys {
        let (after, want, before) =
            (values(&got, key), values(&fixture, &format!("expected.after.{key}")), values(&base, key));
        let err = rel_err(&after, &want);
        if err > worst_weight.0 {
            worst_weight = (err, key.clone());
        }
        assert!(err <= weight_tol, "{case} {key}: weights differ by {err:.2e}");
        let d: Vec<f32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let wd: Vec<f32> = want.iter().zip(&before).map(|(a, b)| a - b).collect();
        largest = wd.iter().fold(largest, |m, v| m.max(v.abs()));
        deltas.push((key.clone(), d, wd));
    }
    assert!(largest > 0.0, "{case}: the reference step moved nothing");
    let mut worst = 0f32;
    for (key, d, wd) in deltas {
        let e = d.iter().zip(&wd).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / largest;
        worst = worst.max(e);
        assert!(e <= update_tol, "{case} {key}: update differs by {e:.2e} of the largest update");
    }
    eprintln!(
        "{case}: {} tensors, worst update error {worst:.2e} of the largest update, worst weights {:.2e} ({})",
        keys.len(),
        worst_weight.0,
        worst_weight.1
    );
    // Every trained parameter, nothing else (the position table is a buffer).
    assert_eq!(got.names().count(), 1 + keys.len());
    assert!(got.get("pos_embed.pos_embed").is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}
