//! `mapo forward train-step` on SD3 / SD3.5 transformers (flow matching, docs/design.md
//! §2b) against the same steps in PyTorch (diffusers' SD3Transformer2DModel, x_σ =
//! (1−σ)·x₀ + σ·ε, target ε − x₀, clip_grad_norm_, torch.optim) from
//! tools/golden/make_sd3_transformer.py: SFT, Flow-DPO and MaPO, SGD and AdamW, 2 steps.
//!
//! Tolerances: losses within 1e-5 relative (1e-4 for Flow-DPO, whose β = 100 multiplies
//! f32 differences in the errors); weights after the steps within 1e-4 relative to each
//! tensor's max |w| (as for the SDXL steps; measured 6.8e-5 at most, AdamW); the update
//! (after − before) within 1e-3 of the largest update of the checked tensors for SGD, 1e-2
//! for AdamW (its per-element normalisation turns f32 noise in a near-zero gradient into a
//! step of up to lr; measured 8.2e-3 for MaPO). Measured values print with --nocapture.

mod common;

use std::process::Command;

use common::*;
use mapo::models::io::{SafeTensorFiles, write_tensors};

fn values(f: &SafeTensorFiles, name: &str) -> Vec<f32> {
    f.get(name).unwrap_or_else(|| panic!("no {name}")).to_data().unwrap().convert::<f32>().try_to_vec::<f32>().unwrap()
}

fn run_case(case: &str, method: &str, args: &[&str], loss_tol: f32, update_tol: f32) {
    let variant = case.split('_').next().unwrap();
    let fixture = open(&format!("{case}.safetensors"));
    let dir = std::env::temp_dir().join(format!("mapo-sd3-train-{case}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inp = dir.join("in.safetensors");
    let names = ["chosen", "rejected", "noise", "sigma", "encoder_hidden_states", "pooled_projections"];
    let tensors = names.iter().map(|n| (n.to_string(), fixture.get(n).unwrap().to_data_any().unwrap())).collect();
    write_tensors(&inp, tensors).unwrap();
    let out = dir.join("out.safetensors");
    let model = fixtures().join(format!("tiny-{variant}"));
    let output = Command::new(env!("CARGO_BIN_EXE_mapo"))
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
    for key in &keys {
        let (after, want, before) =
            (values(&got, key), values(&fixture, &format!("expected.after.{key}")), values(&base, key));
        let err = rel_err(&after, &want);
        assert!(err <= 1e-4, "{case} {key}: weights differ by {err:.2e}");
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
    eprintln!("{case}: {} tensors, worst update error {worst:.2e} of the largest update", keys.len());
    // Every trained parameter, nothing else (the position table is a buffer).
    assert_eq!(got.names().count(), 1 + keys.len());
    assert!(got.get("pos_embed.pos_embed").is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sd3_sft_sgd_two_steps_match_pytorch() {
    run_case("sd3_train_sft_sgd", "sft", &["--optimizer", "sgd"], 1e-5, 1e-3);
}

#[test]
fn sd35_sft_adamw_two_steps_match_pytorch() {
    run_case("sd35_train_sft_adamw", "sft", &["--optimizer", "adamw", "--weight-decay", "1e-2"], 1e-5, 1e-2);
}

#[test]
fn sd35_flow_dpo_sgd_two_steps_match_pytorch() {
    run_case("sd35_train_dpo_sgd", "dpo", &["--optimizer", "sgd", "--param", "beta=100"], 1e-4, 1e-3);
}

#[test]
fn sd35_mapo_adamw_two_steps_match_pytorch() {
    let params = ["--param", "beta=0.1", "--param", "snr_value=0.5", "--param", "num_train_timesteps=1000"];
    let mut args = vec!["--optimizer", "adamw", "--weight-decay", "1e-2"];
    args.extend(params);
    run_case("sd35_train_mapo_adamw", "mapo", &args, 1e-5, 1e-2);
}
