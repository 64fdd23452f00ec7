//! Loss parity with the official formulas of every method (SFT, Diffusion-DPO, MaPO, IPO,
//! DPO-hinge, DMPO, DSPO, Diffusion-KTO) evaluated in float64 by
//! tools/golden/make_methods.py, from the f32 predictions of losses.safetensors (written by
//! tools/golden/make_losses_train.py), and the diagnostics every method logs.
//!
//! Tolerance 1e-6 relative (to max(|value|, 1e-3) for metrics that can be ~0) where the loss
//! arithmetic runs in f64 (flex); F32_TOL on the f32 path (wgpu), with an absolute floor of a
//! few f32 ulps of the inputs for metrics that are differences of errors.

mod common;

use std::process::Command;

use burn::tensor::{DType, Tensor};
use common::*;
use mapo::losses::{Errors, LossInput, Method, Params, build, log_sigmoid};
use mapo::models::io::{SafeTensorFiles, write_tensors};

const CASES: [&str; 5] = ["realistic", "tiny_errors", "large_gaps", "zero_errors", "far_from_reference"];

/// Fixture key, registry name, parameters.
const METHODS: [(&str, &str, &[&str]); 12] = [
    ("sft", "sft", &[]),
    ("dpo", "dpo", &[]),
    ("mapo", "mapo", &[]),
    ("mapo_b1_s2", "mapo", &["beta=1", "snr_value=2"]),
    ("ipo", "ipo", &[]),
    ("ipo_b1000", "ipo", &["beta=1000"]),
    ("dpo_hinge", "dpo_hinge", &[]),
    ("dmpo", "dmpo", &[]),
    ("dmpo_a0.2", "dmpo", &["beta=2000", "alpha=0.2"]),
    ("dspo", "dspo", &[]),
    ("kto", "kto", &[]),
    ("kto_l2", "kto", &["beta=500", "lambda_d=2", "lambda_u=0.5"]),
];

fn method(name: &str, params: &[&str]) -> Method {
    let params: Vec<String> = params.iter().map(|p| p.to_string()).collect();
    build(name, Params::parse(&params).unwrap()).unwrap()
}

/// Relative error allowed for the loss arithmetic in `dtype`: f64 agrees with the f64
/// reference to its last f32 digit; the f32 path (what wgpu and Metal get) is bounded by the
/// f32 rounding of the per-sample errors, which DPO's β = 5000 multiplies.
fn tolerance(dtype: DType) -> f64 {
    if dtype == DType::F64 { 1e-6 } else { F32_TOL }
}
const F32_TOL: f64 = 2e-5;

fn check(what: &str, got: f64, want: f64, tol: f64) {
    check_with_floor(what, got, want, tol, 0.0);
}

/// `check`, passing also when the absolute error is within `floor`. On the f32 path the
/// metrics that are differences of per-sample errors (KTO's kl_estimate, reward margins, the
/// *_vs_ref drifts) cannot be closer than the f32 rounding of their operands, however small
/// the difference itself: the floor is F32_ULPS ulps of the case's largest per-sample error.
fn check_with_floor(what: &str, got: f64, want: f64, tol: f64, floor: f64) {
    let abs = (got - want).abs();
    let err = abs / want.abs().max(1e-3);
    eprintln!("{what}: got {got:.10e} want {want:.10e} rel {err:.1e} abs {abs:.1e}");
    assert!(
        err <= tol || abs <= floor,
        "{what}: got {got}, want {want} (relative error {err:.2e} > {tol:.0e}, absolute {abs:.2e} > {floor:.1e})"
    );
}
const F32_ULPS: f64 = 4.0;

/// The absolute floor of `check_with_floor` for per-sample errors `errors`.
fn f32_floor(dtype: DType, errors: &[f64]) -> f64 {
    if dtype == DType::F64 {
        0.0
    } else {
        F32_ULPS * f32::EPSILON as f64 * errors.iter().fold(0.0f64, |m, e| m.max(e.abs()))
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    t.cast(DType::F64).into_scalar::<f64>()
}

/// Every case and method in the backend's own loss precision and, where that is f64, in f32
/// too: the f32 arithmetic is tested on every backend. Every metric a method logs must be
/// in the fixture, and every fixture value must be logged.
#[test]
fn losses_match_official_formulas() {
    let device = device();
    let inputs = open("losses.safetensors");
    let expected = open("methods.safetensors");
    let mut dtypes = vec![mapo::losses::loss_dtype(&device)];
    if dtypes[0] != DType::F32 {
        dtypes.push(DType::F32);
    }
    for dtype in dtypes {
        let tol = tolerance(dtype);
        for case in CASES {
            let read = |n: &str| inputs.float::<4>(&format!("{case}.{n}"), &device, DType::F32).unwrap();
            let (pred, target, ref_pred) = (read("model_pred"), read("target"), read("ref_pred"));
            let errors = mapo::losses::per_sample_errors_in(pred.clone(), target.clone(), dtype);
            let want = inputs.float::<1>(&format!("{case}.errors"), &device, DType::F64).unwrap();
            let want = want.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
            let got = errors.cast(DType::F64).into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
            for (g, w) in got.iter().zip(&want) {
                check(&format!("{dtype:?} {case} per-sample error"), *g, *w, tol);
            }
            let rows = pred.dims()[0];
            let floor = f32_floor(dtype, &want);
            for (key, name, params) in METHODS {
                let m = method(name, params);
                let input = LossInput::from_pair_rows(
                    pred.clone(),
                    target.clone(),
                    Some(ref_pred.clone()),
                    m.needs,
                    vec![500; rows],
                    dtype,
                );
                let out = m.compute(&input);
                let prefix = format!("{case}.{key}.");
                let want = |k: &str| scalar(expected.float::<1>(&format!("{prefix}{k}"), &device, DType::F64).unwrap());
                check(&format!("{dtype:?} {case} {key} loss"), scalar(out.loss), want("loss"), tol);
                let logged: Vec<&str> = out.metrics.iter().map(|(k, _)| *k).collect();
                for k in expected.names().filter_map(|n| n.strip_prefix(&prefix)).filter(|k| *k != "loss") {
                    assert!(logged.contains(&k), "{case} {key}: {k} is in the fixture but not logged ({logged:?})");
                }
                for (k, v) in out.metrics {
                    check_with_floor(&format!("{dtype:?} {case} {key} {k}"), scalar(v), want(k), tol, floor);
                }
            }
        }
    }
}

/// KTO on unpaired rows (Layout::Unpaired, rows in another order with their labels) gives
/// the official values of the same rows as pairs: the unpaired path reads labels, not
/// positions. Implicit accuracy is per row there, so it is not compared.
#[test]
fn kto_on_unpaired_rows_matches_the_official_formula() {
    let device = device();
    let inputs = open("losses.safetensors");
    let expected = open("methods.safetensors");
    let dtype = mapo::losses::loss_dtype(&device);
    for case in CASES {
        let read = |n: &str| inputs.float::<4>(&format!("{case}.{n}"), &device, DType::F32).unwrap();
        let (pred, target, ref_pred) = (read("model_pred"), read("target"), read("ref_pred"));
        let n = pred.dims()[0];
        // Interleaved and reversed: rejected and chosen rows alternate.
        let order: Vec<i64> = (0..n as i64 / 2).flat_map(|i| [n as i64 / 2 + i, i]).rev().collect();
        let labels: Vec<bool> = order.iter().map(|&i| (i as usize) < n / 2).collect();
        let pick = |t: &Tensor<4>| t.clone().select(0, Tensor::<1, burn::tensor::Int>::from_ints(&order[..], &device));
        for (key, params) in [("kto", &[][..]), ("kto_l2", &["beta=500", "lambda_d=2", "lambda_u=0.5"][..])] {
            let m = method("kto", params);
            let input = LossInput::new(
                pick(&pred),
                pick(&target),
                mapo::losses::Layout::Unpaired(labels.clone()),
                vec![500; n],
                false,
                dtype,
            )
            .with_reference_prediction(pick(&ref_pred), pick(&target), dtype);
            let out = m.compute(&input);
            let want =
                |k: &str| scalar(expected.float::<1>(&format!("{case}.{key}.{k}"), &device, DType::F64).unwrap());
            let tol = tolerance(dtype);
            let errors = inputs.float::<1>(&format!("{case}.errors"), &device, DType::F64).unwrap();
            let floor = f32_floor(dtype, &errors.into_data().convert::<f64>().try_to_vec::<f64>().unwrap());
            check(&format!("unpaired {case} {key} loss"), scalar(out.loss), want("loss"), tol);
            for (k, v) in out.metrics.into_iter().filter(|(k, _)| *k != "implicit_acc") {
                check_with_floor(&format!("unpaired {case} {key} {k}"), scalar(v), want(k), tol, floor);
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
    let errors = Errors { chosen: chosen.clone(), rejected: Some(rejected.clone()) };
    let out = m.compute(&LossInput::from_errors(&errors, None));
    let grads = out.loss.backward();
    for g in [chosen.grad(&grads).unwrap(), rejected.grad(&grads).unwrap()] {
        assert!(to_vec(g).iter().all(|v| v.is_finite()));
    }
}

#[test]
fn registry_rejects_unknown_names_and_parameters() {
    let err = build("orpo", Params::default()).unwrap_err().to_string();
    assert!(
        err.contains("unknown method \"orpo\"") && err.contains("sft, dpo, mapo, ipo, dpo_hinge, dmpo, dspo, kto"),
        "{err}"
    );
    let err = build("mapo", Params::parse(&["gamma=1".into()]).unwrap()).unwrap_err().to_string();
    assert!(err.contains("no parameter \"gamma\""), "{err}");
    let err = build("dmpo", Params::parse(&["alpha=2".into()]).unwrap()).unwrap_err().to_string();
    assert!(err.contains("dmpo: alpha must be in [0, 1]"), "{err}");
    let err = build("ipo", Params::parse(&["beta=0".into()]).unwrap()).unwrap_err().to_string();
    assert!(err.contains("ipo: beta must be positive"), "{err}");
    assert!(!build("sft", Params::default()).unwrap().uses_rejected());
    assert!(!build("mapo", Params::default()).unwrap().uses_reference());
    for name in ["dpo", "ipo", "dpo_hinge", "dmpo", "dspo", "kto"] {
        let m = build(name, Params::default()).unwrap();
        assert!(m.uses_reference() && m.uses_rejected() && m.name == name, "{name}");
    }
    assert!(build("dspo", Params::default()).unwrap().needs.predictions);
    assert!(!build("kto", Params::default()).unwrap().needs.pairs);
}

/// `mapo forward loss` for every method: the official values, through the f32 file.
#[test]
fn forward_loss_cli_writes_loss_and_metrics() {
    let f = open("losses.safetensors");
    let expected = open("methods.safetensors");
    let dir = std::env::temp_dir().join(format!("mapo-loss-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tol = tolerance(mapo::losses::loss_dtype(&device()));
    for case in ["realistic", "far_from_reference"] {
        let inp = dir.join(format!("{case}.safetensors"));
        let tensors = ["model_pred", "target", "ref_pred"]
            .iter()
            .map(|n| (n.to_string(), f.get(&format!("{case}.{n}")).unwrap().to_data().unwrap()))
            .collect();
        write_tensors(&inp, tensors).unwrap();
        for (key, method, params) in METHODS {
            let out = dir.join(format!("{case}-{key}.safetensors"));
            let status = Command::new(env!("CARGO_BIN_EXE_mapo"))
                .args(["forward", "loss", "--method", method, "--device", &device_name()])
                .args(params.iter().flat_map(|p| ["--param", p]))
                .args(["--inputs", inp.to_str().unwrap(), "--out", out.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success());
            let got = SafeTensorFiles::open_file(&out).unwrap();
            let prefix = format!("{case}.{key}.");
            let keys: Vec<&str> = expected.names().filter_map(|n| n.strip_prefix(&prefix)).collect();
            assert!(keys.contains(&"loss") && keys.contains(&"chosen_loss"), "{key}: {keys:?}");
            for k in keys {
                let v = got.get(k).unwrap_or_else(|| panic!("{method}: no {k}"));
                assert_eq!(v.shape, vec![1]);
                let value = v.to_data().unwrap().convert::<f64>().try_to_vec::<f64>().unwrap()[0];
                let want = expected.get(&format!("{prefix}{k}")).unwrap().to_data().unwrap();
                let want = want.convert::<f64>().try_to_vec::<f64>().unwrap()[0];
                // The file stores f32: at best f32 resolution.
                check(&format!("cli {case} {key} {k}"), value, want, tol.max(1e-7));
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// f'(x) for f(x) = x/(eˣ − 1), in f64 on the host: series near 0, closed form elsewhere.
fn odds_derivative(x: f64) -> f64 {
    if x < 1e-3 { -0.5 + x / 6.0 - x.powi(3) / 180.0 } else { (x.exp_m1() - x * x.exp()) / x.exp_m1().powi(2) }
}

/// The margin's value and gradient through every branch of `odds_difference` (series, anchored,
/// direct; ties; zero), against the host's f64: values to 1e-12 (f64) / 2e-6 (f32) of the
/// odds, gradients to 1e-9 / 1e-5.
#[test]
fn odds_difference_value_and_gradient_in_every_branch() {
    let base = device();
    let points: [(f64, f64); 9] = [
        (0.0, 0.0),
        (0.05, 0.0501),
        (0.0, 0.3),
        (0.5, 0.5),
        (0.9, 1.1),
        (1.5, 1.5001),
        (3.0, 7.0),
        (0.0, 2.0),
        (40.0, 40.2),
    ];
    let f = |x: f64| if x == 0.0 { 1.0 } else { x / x.exp_m1() };
    let mut dtypes = vec![mapo::losses::loss_dtype(&base)];
    if dtypes[0] != DType::F32 {
        dtypes.push(DType::F32);
    }
    for dtype in dtypes {
        let (vtol, gtol) = if dtype == DType::F64 { (1e-12, 1e-9) } else { (2e-6, 1e-5) };
        let device = base.clone().autodiff();
        let make = |v: Vec<f64>| {
            Tensor::<1>::from_data(burn::tensor::TensorData::new(v, [points.len()]), &device).cast(dtype).require_grad()
        };
        let a = make(points.iter().map(|p| p.0).collect());
        let b = make(points.iter().map(|p| p.1).collect());
        let d = mapo::losses::odds::odds_difference(a.clone(), b.clone(), b.clone() - a.clone());
        let host = |t: Tensor<1>| t.cast(DType::F64).into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
        // The points as the device holds them (rounded to f32 on the way in).
        let (xs, ys) = (host(a.clone()), host(b.clone()));
        let got = host(d.clone());
        let grads = d.sum().backward();
        let (ga, gb) = (host(a.grad(&grads).unwrap()), host(b.grad(&grads).unwrap()));
        for (i, (&x, &y)) in xs.iter().zip(&ys).enumerate() {
            let want = f(x) - f(y);
            let scale = want.abs().max(1e-3 * f(x).max(f(y))).max(1e-300);
            assert!((got[i] - want).abs() <= vtol * scale.max(1e-3), "{dtype:?} f({x}) − f({y}): {} vs {want}", got[i]);
            for (g, w, what) in [(ga[i], odds_derivative(x), "∂a"), (gb[i], -odds_derivative(y), "∂b")] {
                assert!((g - w).abs() <= gtol * w.abs().max(1e-3), "{dtype:?} {what} at ({x}, {y}): {g} vs {w}");
            }
        }
    }
}
