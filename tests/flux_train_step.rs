//! `mapo forward train-step` on FLUX.1 transformers (flow matching, docs/design.md §2b:
//! unpacked latents in, packed inside; σ passed as the pipeline passes it; [dev]'s embedded
//! guidance per pair) against the same steps in PyTorch (diffusers' FluxTransformer2DModel,
//! tools/golden/make_flux_transformer.py): SFT on [schnell] with SGD, and SFT, Flow-DPO and
//! MaPO on [dev] with AdamW / SGD, 2 steps each. Tolerances as for SD3
//! (tests/sd3_train_step.rs): losses 1e-5 relative (1e-4 for Flow-DPO's β = 100), weights
//! 1e-4 of each tensor's max |w|, updates 1e-3 (SGD) / 1e-2 (AdamW) of the largest update.
//! One exception, AdamW on [dev]: the timestep embedder's first layer, whose inputs are
//! sin/cos of σ·1000, has near-cancelling gradient elements that AdamW's normalisation turns
//! into steps of up to lr with f32 noise in their sign; its weights agree to 8.6e-5 on flex
//! and 1.2e-4 on wgpu (lavapipe), every other tensor to ~1e-7: those cases allow 3e-4.

mod common;

use common::*;

const SCHNELL: [&str; 6] = ["chosen", "rejected", "noise", "sigma", "encoder_hidden_states", "pooled_projections"];
const DEV: [&str; 7] =
    ["chosen", "rejected", "noise", "sigma", "encoder_hidden_states", "pooled_projections", "guidance"];

#[test]
fn flux_schnell_sft_sgd_two_steps_match_pytorch() {
    run_flow_train_case(
        "flux_train_sft_sgd",
        "tiny-flux-schnell",
        &SCHNELL,
        "sft",
        &["--optimizer", "sgd"],
        1e-5,
        1e-3,
    );
}

#[test]
fn flux_dev_sft_adamw_two_steps_match_pytorch() {
    let args = ["--optimizer", "adamw", "--weight-decay", "1e-2"];
    run_flow_train_case_with("flux_dev_train_sft_adamw", "tiny-flux-dev", &DEV, "sft", &args, [1e-5, 3e-4, 1e-2]);
}

#[test]
fn flux_dev_flow_dpo_sgd_two_steps_match_pytorch() {
    let args = ["--optimizer", "sgd", "--param", "beta=100"];
    run_flow_train_case("flux_dev_train_dpo_sgd", "tiny-flux-dev", &DEV, "dpo", &args, 1e-4, 1e-3);
}

#[test]
fn flux_dev_mapo_adamw_two_steps_match_pytorch() {
    let args = ["--optimizer", "adamw", "--weight-decay", "1e-2", "--param", "beta=0.1", "--param", "snr_value=0.5"];
    let args = [&args[..], &["--param", "num_train_timesteps=1000"]].concat();
    run_flow_train_case_with("flux_dev_train_mapo_adamw", "tiny-flux-dev", &DEV, "mapo", &args, [1e-5, 3e-4, 1e-2]);
}

/// A [dev] step without its guidance input is refused by name.
#[test]
fn flux_dev_train_step_needs_guidance() {
    let fixture = open("flux_dev_train_sft_adamw.safetensors");
    let dir = std::env::temp_dir().join(format!("mapo-flux-noguidance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inp = dir.join("in.safetensors");
    let tensors = SCHNELL.iter().map(|n| (n.to_string(), fixture.get(n).unwrap().to_data_any().unwrap())).collect();
    mapo::models::io::write_tensors(&inp, tensors).unwrap();
    let model = fixtures().join("tiny-flux-dev");
    let out = mapo_quiet(&[
        "forward",
        "train-step",
        "--method",
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--inputs",
        inp.to_str().unwrap(),
        "--out",
        dir.join("o.safetensors").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("guidance: missing"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
