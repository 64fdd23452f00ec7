//! Loss parity with the official SFT / Diffusion-DPO / MaPO formulas evaluated in float64
//! by tools/golden/make_losses_train.py, from the same f32 predictions.
//!
//! Tolerance 1e-6 relative (to max(|value|, 1e-3) for metrics that can be ~0): per-sample
//! errors and loss arithmetic run in f64 on backends that have it (flex does).

mod common;

use std::process::Command;

use burn::tensor::{DType, Tensor};
use common::*;
use mapo::losses::{Errors, Params, build, log_sigmoid};
use mapo::models::io::{SafeTensorFiles, write_tensors};

const CASES: [&str; 4] = ["realistic", "tiny_errors", "large_gaps", "zero_errors"];

fn method(name: &str) -> Box<dyn mapo::losses::PreferenceLoss> {
    match name {
        "mapo_b1_s2" => build("mapo", Params::parse(&["beta=1".into(), "snr_value=2".into()]).unwrap()).unwrap(),
        other => build(other, Params::default()).unwrap(),
    }
}

fn check(what: &str, got: f64, want: f64) {
    let err = (got - want).abs() / want.abs().max(1e-3);
    eprintln!("{what}: got {got:.10e} want {want:.10e} rel {err:.1e}");
    assert!(err <= 1e-6, "{what}: got {got}, want {want} (relative error {err:.2e})");
}

fn scalar(t: Tensor<1>) -> f64 {
    t.cast(DType::F64).into_scalar::<f64>()
}

#[test]
fn losses_match_official_formulas() {
    let device = device();
    let f = open("losses.safetensors");
    for case in CASES {
        let read = |n: &str| f.float::<4>(&format!("{case}.{n}"), &device, DType::F32).unwrap();
        let (pred, target, ref_pred) = (read("model_pred"), read("target"), read("ref_pred"));
        let errors = mapo::losses::per_sample_errors(pred.clone(), target.clone());
        let want = to_vec(f.float::<1>(&format!("{case}.errors"), &device, DType::F64).unwrap());
        let got = to_vec(errors);
        for (g, w) in got.iter().zip(&want) {
            check(&format!("{case} per-sample error"), *g as f64, *w as f64);
        }
        for name in ["sft", "dpo", "mapo", "mapo_b1_s2"] {
            let (m, key) = (method(name), name);
            let rows = pred.dims()[0];
            let (p, t) = if m.uses_rejected() {
                (pred.clone(), target.clone())
            } else {
                (pred.clone().narrow(0, 0, rows / 2), target.clone().narrow(0, 0, rows / 2))
            };
            let policy = Errors::from_prediction(p, t, m.uses_rejected());
            let reference = m.uses_reference().then(|| Errors::from_prediction(ref_pred.clone(), target.clone(), true));
            let out = m.compute(&policy, reference.as_ref());
            let want = |k: &str| scalar(f.float::<1>(&format!("{case}.{key}.{k}"), &device, DType::F64).unwrap());
            check(&format!("{case} {key} loss"), scalar(out.loss), want("loss"));
            assert!(!out.metrics.is_empty());
            for (k, v) in out.metrics {
                check(&format!("{case} {key} {k}"), scalar(v), want(k));
            }
        }
    }
}

#[test]
fn log_sigmoid_is_finite_at_large_magnitudes() {
    let device = device();
    let z = Tensor::<1>::from_floats([-1e4, -50.0, 0.0, 50.0, 1e4], &device);
    let got = to_vec(log_sigmoid(z));
    let want = [-1e4f32, -50.0, -std::f32::consts::LN_2, -1.9287e-22, 0.0];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
    }
}

#[test]
fn mapo_gradient_is_finite_at_zero_error() {
    let device = device().autodiff();
    let chosen = Tensor::<1>::from_floats([0.0, 0.1], &device).require_grad();
    let rejected = Tensor::<1>::from_floats([0.2, 0.0], &device).require_grad();
    let m = build("mapo", Params::default()).unwrap();
    let out = m.compute(&Errors { chosen: chosen.clone(), rejected: Some(rejected.clone()) }, None);
    let grads = out.loss.backward();
    for g in [chosen.grad(&grads).unwrap(), rejected.grad(&grads).unwrap()] {
        assert!(to_vec(g).iter().all(|v| v.is_finite()));
    }
}

#[test]
fn registry_rejects_unknown_names_and_parameters() {
    let err = build("orpo", Params::default()).unwrap_err().to_string();
    assert!(err.contains("unknown method \"orpo\"") && err.contains("sft, dpo, mapo"), "{err}");
    let err = build("mapo", Params::parse(&["gamma=1".into()]).unwrap()).unwrap_err().to_string();
    assert!(err.contains("no parameter \"gamma\""), "{err}");
    assert!(!build("sft", Params::default()).unwrap().uses_rejected());
    assert!(!build("mapo", Params::default()).unwrap().uses_reference());
    assert!(build("dpo", Params::default()).unwrap().uses_reference());
}

#[test]
fn forward_loss_cli_writes_loss_and_metrics() {
    let f = open("losses.safetensors");
    let dir = std::env::temp_dir().join(format!("mapo-loss-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inp = dir.join("in.safetensors");
    let tensors = ["model_pred", "target", "ref_pred"]
        .iter()
        .map(|n| (n.to_string(), f.get(&format!("realistic.{n}")).unwrap().to_data().unwrap()))
        .collect();
    write_tensors(&inp, tensors).unwrap();
    for (method, metrics) in [("dpo", vec!["loss", "implicit_acc"]), ("mapo", vec!["loss", "margin", "chosen_loss"])] {
        let out = dir.join(format!("{method}.safetensors"));
        let status = Command::new(env!("CARGO_BIN_EXE_mapo"))
            .args(["forward", "loss", "--method", method, "--device", "flex"])
            .args(["--inputs", inp.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        let got = SafeTensorFiles::open_file(&out).unwrap();
        for k in metrics {
            let v = got.get(k).unwrap_or_else(|| panic!("{method}: no {k}"));
            assert_eq!(v.shape, vec![1]);
            let value = v.to_data().unwrap().convert::<f64>().try_to_vec::<f64>().unwrap()[0];
            let want = f.get(&format!("realistic.{method}.{k}")).unwrap().to_data().unwrap();
            let want = want.convert::<f64>().try_to_vec::<f64>().unwrap()[0];
            // The file stores f32: compare at f32 resolution.
            assert!((value - want).abs() <= 1e-6 * want.abs().max(1e-3), "{method} {k}: {value} vs {want}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
