//! Memory, not time: the two settings that exist to lower a training step's peak memory
//! must lower it. Each step runs in its own `mapo bench train-step` process, whose peak
//! RSS (Linux VmHWM) it reports, so the figures do not mix. Fails if the memory-efficient
//! attention or gradient checkpointing is silently ignored.

use std::process::Command;

fn peak_rss(args: &[&str]) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["bench", "train-step", "--model", "tiny", "--device", "flex", "--steps", "1", "--warmup", "0"])
        .args(args)
        .env("MAPO_QUIET_DEVICE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    v["peak_rss_bytes"].as_u64().expect("peak RSS (Linux)")
}

/// At 384² the naive path keeps ~3 score matrices per attention layer (2,304 tokens at
/// the first attention level): measured 1.0 GB against 0.33 GB at 512² (benches/RESULTS.md).
#[test]
fn efficient_attention_lowers_peak_memory() {
    let args = ["--method", "mapo", "--resolution", "384", "--batch", "1"];
    let naive = peak_rss(&[&args[..], &["--attention", "naive"]].concat());
    let efficient = peak_rss(&args);
    eprintln!("peak RSS: naive {naive}, efficient {efficient}");
    assert!(
        (efficient as f64) < 0.7 * naive as f64,
        "efficient attention peaked at {efficient} bytes, naive at {naive}: not lower by 30%"
    );
}

#[test]
fn gradient_checkpointing_lowers_peak_memory() {
    let args = ["--method", "sft", "--resolution", "256", "--batch", "4"];
    let plain = peak_rss(&args);
    let ckpt = peak_rss(&[&args[..], &["--grad-ckpt"]].concat());
    eprintln!("peak RSS: plain {plain}, gradient checkpointing {ckpt}");
    assert!(
        (ckpt as f64) < 0.9 * plain as f64,
        "gradient checkpointing peaked at {ckpt} bytes, without it {plain}: not lower by 10%"
    );
}

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["bench", "train-step", "--device", "flex", "--steps", "1", "--warmup", "0"])
        .args(args)
        .env("MAPO_QUIET_DEVICE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap()
}

/// The real job's shape at a size CI can run: a LoRA MaPO step of the half-width
/// SDXL-structured UNet (benches/scale/mid_unet.json, 248M parameters) at 512². Block
/// checkpointing must keep what the step adds above the weights to a fraction of what it
/// adds without it: this is the ratio that made the real-size step 1.6× PyTorch's memory
/// when checkpointing silently did nothing for LoRA (benches/RESULTS.md, 2026-12-05).
#[test]
fn block_checkpointing_keeps_a_lora_steps_activations_small() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/scale/mid_unet.json");
    let args = ["--model", config, "--method", "mapo", "--resolution", "512", "--batch", "1", "--lora", "4"];
    let added = |v: &serde_json::Value| {
        let peak = v["peak_rss_bytes"].as_u64().expect("peak RSS (Linux)");
        let weights = v["phases"]["build"]["peak_rss_bytes"].as_u64().expect("the build phase");
        (peak.saturating_sub(weights), weights)
    };
    let (plain, weights) = added(&bench(&args));
    let (ckpt, _) = added(&bench(&[&args[..], &["--grad-ckpt"]].concat()));
    eprintln!("added above the weights ({weights} bytes): plain {plain}, checkpointed {ckpt}");
    assert!(
        (ckpt as f64) < 0.35 * plain as f64,
        "block checkpointing added {ckpt} bytes above the weights, without it {plain}: not below 35%"
    );
}
