//! The same tiny `mapo train` run (same seed, data and config) on flex and on the backend
//! under test (`MAPO_TEST_DEVICE`, wgpu in CI) gives the same loss curve.
//!
//! Tolerance per step, relative: 1e-5 for MaPO and SFT (measured on lavapipe: 7.3e-7 and
//! 9.8e-8), 2e-3 for DPO (measured 3.3e-4: β = 5000 multiplies the f32 differences between
//! the backends' kernels; on flex the reference pass also uses Burn's fused attention while
//! wgpu's does not).

mod common;

use std::path::Path;

use common::*;

fn losses(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .collect()
}

#[test]
fn a_tiny_run_gives_the_same_loss_curve_on_flex_and_on_the_device_under_test() {
    let dir = std::env::temp_dir().join(format!("mapo-cross-backend-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = fixtures().join("tiny-sdxl");
    let pairs = dir.join("pairs.safetensors");
    run_mapo(&["make-pairs", "--model", model.to_str().unwrap(), "--pairs", "4", "--out", pairs.to_str().unwrap()]);
    let other = device_name();
    for (method, tol) in [("mapo", 1e-5), ("dpo", 2e-3), ("sft", 1e-5)] {
        let mut curves = Vec::new();
        // Two folders even when the device under test is flex itself.
        for (i, device) in ["flex", other.as_str()].into_iter().enumerate() {
            let out = dir.join(format!("{method}-{i}-{device}"));
            let config = dir.join(format!("{method}-{i}-{device}.toml"));
            std::fs::write(
                &config,
                format!(
                    "model = {model:?}\ndata = {pairs:?}\noutput_dir = {out:?}\nmethod = \"{method}\"\nsteps = 5\n\
                     batch_size = 2\nseed = 7\ndevice = \"{device}\"\n[optimizer]\nlr = 1e-3\n"
                ),
            )
            .unwrap();
            run_mapo(&["train", "--config", config.to_str().unwrap()]);
            curves.push(losses(&out));
        }
        let (a, b) = (&curves[0], &curves[1]);
        assert_eq!(a.len(), 5, "{method}: {a:?}");
        assert_eq!(a.len(), b.len());
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs() / x.abs().max(1e-3)).fold(0f64, f64::max);
        eprintln!("{method}: flex {a:?}\n{method}: {other} {b:?}\n{method}: largest relative difference {worst:.2e}");
        assert!(worst <= tol, "{method}: flex and {other} loss curves differ by {worst:.2e} > {tol:.0e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
