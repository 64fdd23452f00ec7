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

use common::*;

/// A §2b train-step case of the tiny SD3 folders (tests/common/mod.rs: `flow_train_case`).
fn flow_train_case(case: &str, method: &str, args: &[&str], loss_tol: f32, update_tol: f32) {
    let variant = case.split('_').next().unwrap();
    let names = ["chosen", "rejected", "noise", "sigma", "encoder_hidden_states", "pooled_projections"];
    run_flow_train_case(case, &format!("tiny-{variant}"), &names, method, args, loss_tol, update_tol);
}

#[test]
fn sd3_sft_sgd_two_steps_match_pytorch() {
    flow_train_case("sd3_train_sft_sgd", "sft", &["--optimizer", "sgd"], 1e-5, 1e-3);
}

#[test]
fn sd35_sft_adamw_two_steps_match_pytorch() {
    flow_train_case("sd35_train_sft_adamw", "sft", &["--optimizer", "adamw", "--weight-decay", "1e-2"], 1e-5, 1e-2);
}

#[test]
fn sd35_flow_dpo_sgd_two_steps_match_pytorch() {
    flow_train_case("sd35_train_dpo_sgd", "dpo", &["--optimizer", "sgd", "--param", "beta=100"], 1e-4, 1e-3);
}

#[test]
fn sd35_mapo_adamw_two_steps_match_pytorch() {
    let params = ["--param", "beta=0.1", "--param", "snr_value=0.5", "--param", "num_train_timesteps=1000"];
    let mut args = vec!["--optimizer", "adamw", "--weight-decay", "1e-2"];
    args.extend(params);
    flow_train_case("sd35_train_mapo_adamw", "mapo", &args, 1e-5, 1e-2);
}
