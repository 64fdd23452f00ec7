//! The online methods' pieces through the CLI as checks outside the repository call them
//! (docs/design.md §4c: `mapo forward sde-step`, `forward advantages`, `forward loss --method
//! grpo|nft`) against float64 references computed from the formulas
//! (tools/golden/make_online.py), on the test device. Tolerance: 2e-6 relative to each
//! output's max magnitude (f32 arithmetic against f64; measured values print with --nocapture).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mapo::models::io::{SafeTensorFiles, write_tensors};

fn params(case: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join("online_cases.json")).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    all[case].as_object().map_or(vec![], |o| o.iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// Writes the case's inputs (every tensor of `case.` but `expected.*`), runs `forward
/// <component>`, and returns the output file.
fn run(dir: &Path, component: &[&str], case: &str, skip: &[&str]) -> PathBuf {
    let f = open("online_cases.safetensors");
    let prefix = format!("{case}.");
    let tensors = f
        .names()
        .filter_map(|n| n.strip_prefix(&prefix))
        .filter(|n| !n.starts_with("expected.") && !skip.contains(n))
        .map(|n| (n.to_string(), f.get(&format!("{prefix}{n}")).unwrap().to_data_any().unwrap()))
        .collect();
    let (inp, out) = (dir.join(format!("{case}.in.safetensors")), dir.join(format!("{case}.out.safetensors")));
    write_tensors(&inp, tensors).unwrap();
    let device = device_name();
    let mut args: Vec<String> = ["forward"].iter().chain(component).map(|s| s.to_string()).collect();
    args.extend(
        ["--inputs", inp.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", &device].map(String::from),
    );
    for p in params(case) {
        args.extend(["--param".to_string(), p]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_mapo(&refs);
    out
}

fn check(out: &Path, case: &str, names: &[&str], tol: f32) {
    let (got, f) = (SafeTensorFiles::open_file(out).unwrap(), open("online_cases.safetensors"));
    for name in names {
        let (g, w) = (values(&got, name), values(&f, &format!("{case}.expected.{name}")));
        assert_eq!(g.len(), w.len(), "{case} {name}: length");
        let err = rel_err(&g, &w);
        eprintln!("{case} {name}: relative error {err:.2e}");
        assert!(err <= tol, "{case} {name}: {g:?} vs {w:?} ({err:e})");
    }
}

fn tmp(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapo-online-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn sde_step_matches_the_formula() {
    let dir = tmp("sde");
    for case in ["sde.step", "sde.score", "sde.small", "sde.ode"] {
        let out = run(&dir, &["sde-step"], case, &[]);
        check(&out, case, &["prev_sample", "mean", "std", "log_prob"], 2e-6);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn advantages_match_the_formula() {
    let dir = tmp("adv");
    for case in ["adv.groups", "adv.clip", "adv.ties"] {
        let out = run(&dir, &["advantages"], case, &[]);
        check(&out, case, &["advantages"], 2e-6);
    }
    // The tied group's advantages are exactly 0; the outlier's clips (at adv_clip_max = 1).
    let got = values(&SafeTensorFiles::open_file(&dir.join("adv.ties.out.safetensors")).unwrap(), "advantages");
    assert_eq!(&got[..3], &[0.0, 0.0, 0.0]);
    let got = values(&SafeTensorFiles::open_file(&dir.join("adv.clip.out.safetensors")).unwrap(), "advantages");
    assert_eq!(got[3], 1.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn grpo_and_nft_losses_match_the_formulas() {
    let dir = tmp("loss");
    for case in ["grpo.kl", "grpo.wide", "grpo.nokl"] {
        // Without the KL term the means are not needed.
        let skip: &[&str] = if case == "grpo.nokl" { &["mean", "ref_mean", "s"] } else { &[] };
        let out = run(&dir, &["loss", "--method", "grpo"], case, skip);
        check(&out, case, &["loss", "policy_loss", "kl"], 2e-6);
    }
    for case in ["nft.default", "nft.half"] {
        let out = run(&dir, &["loss", "--method", "nft"], case, &[]);
        check(&out, case, &["loss"], 2e-6);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bad inputs are errors naming the tensor or parameter.
#[test]
fn online_inputs_are_checked() {
    let dir = tmp("bad");
    let f = open("online_cases.safetensors");
    let get = |n: &str| f.get(n).unwrap().to_data_any().unwrap();
    let inp = dir.join("in.safetensors");
    let try_run = |args: &[&str]| {
        let mut all = vec!["forward"];
        all.extend_from_slice(args);
        all.extend(["--inputs", inp.to_str().unwrap(), "--out", "/dev/null"]);
        let out = mapo_quiet(&all);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // One group id short.
    let group = burn::tensor::TensorData::new(vec![0i64; 11], [11]);
    write_tensors(&inp, vec![("rewards".into(), get("adv.groups.rewards")), ("group".into(), group)]).unwrap();
    assert!(try_run(&["advantages"]).contains("group: shape [11], expected [12]"));
    // sigma_next above sigma.
    let names = ["latents", "model_output", "noise", "sigma"];
    let mut tensors: Vec<(String, burn::tensor::TensorData)> =
        names.iter().map(|n| (n.to_string(), get(&format!("sde.step.{n}")))).collect();
    tensors.push(("sigma_next".into(), burn::tensor::TensorData::new(vec![0.95f32, 0.8, 0.5], [3])));
    write_tensors(&inp, tensors).unwrap();
    let err = try_run(&["sde-step"]);
    assert!(err.contains("sigma_next: row 1 is 0.8"), "{err}");
    let err = try_run(&["loss", "--method", "grpo", "--param", "clip=0.1"]);
    assert!(err.contains("no parameter \"clip\""), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// DDPO's DDIM step with η = 1 (`sample::sde::ddim_step_logprob`): 50 steps of SDXL's
/// scaled-linear schedule, the last step's previous timestep clamped to 0; ᾱ as the fixture
/// computes it (f64 cumulative product rounded to f32). Tolerance 2e-6 (log_prob 1e-5:
/// σ-small rows divide f32 noise by s²).
#[test]
fn ddpo_ddim_step_matches_the_formula() {
    use burn::tensor::DType;
    let f = open("online_cases.safetensors");
    let device = device();
    let t4 = |n: &str| f.float::<4>(&format!("ddpo.{n}"), &device, DType::F32).unwrap();
    let ts: Vec<i64> =
        f.get("ddpo.timestep").unwrap().to_data_any().unwrap().convert::<i64>().try_to_vec::<i64>().unwrap();
    let (lo, hi) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let mut acc = 1.0;
    let ac: Vec<f64> = (0..1000)
        .map(|i| {
            let beta = (lo + (hi - lo) * i as f64 / 999.0).powi(2);
            acc *= 1.0 - beta;
            acc
        })
        .collect();
    let step =
        mapo::sample::sde::ddim_step_logprob(t4("sample"), t4("eps"), Some(t4("noise")), &ts, &ac, 50, 1.0, None);
    let want = |n: &str| values(&f, &format!("ddpo.expected.{n}"));
    for (name, got, tol) in [
        ("prev_sample", to_vec(step.prev_sample), 2e-6),
        ("mean", to_vec(step.mean), 2e-6),
        ("std", to_vec(step.std), 2e-6),
        ("log_prob", to_vec(step.log_prob), 1e-5),
    ] {
        let err = rel_err(&got, &want(name));
        eprintln!("ddpo {name}: relative error {err:.2e}");
        assert!(err <= tol, "ddpo {name}: {err:e}");
    }
}
