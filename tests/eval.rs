//! `mapo eval` end to end on the tiny pipeline and the tiny reward models: three variants
//! (base, a full fine-tune's UNet, the same run's LoRA), two scorers, cached images.

mod common;

use common::*;

#[test]
fn eval_compares_variants_and_reuses_its_images() {
    let dir = std::env::temp_dir().join(format!("mapo-eval-{}", std::process::id()));
    let run = tiny_lora_run(&dir.join("train"), "sft", "5e-2", "8x8");
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "a red circle\n\na blue square on a dark background\n").unwrap();
    let out = dir.join("eval");
    let tiny_clip = fixtures().join("tiny-clip");
    let model = fixtures().join("tiny-sdxl");
    let eval = |scorers: &[String]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"));
        cmd.args(["eval", "--model", model.to_str().unwrap(), "--prompts", prompts.to_str().unwrap()])
            .args(["--variant", "base=base"])
            .args(["--variant", &format!("merged=unet:{}", run.join("unet").display())])
            .args(["--variant", &format!("lora=lora:{}", run.join("pytorch_lora_weights_kohya.safetensors").display())])
            .args(["--seeds", "2", "--steps", "2", "--device", &device_name(), "--out", out.to_str().unwrap()])
            .env("MAPO_QUIET_DEVICE", "1");
        for s in scorers {
            cmd.args(["--scorer", s]);
        }
        cmd.output().unwrap()
    };
    let pick = format!("pickscore={}", tiny_clip.display());
    let first = eval(std::slice::from_ref(&pick));
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let images = |v: &str| std::fs::read_dir(out.join("images").join(v)).unwrap().count();
    assert_eq!([images("base"), images("merged"), images("lora")], [4, 4, 4], "2 prompts × 2 seeds each");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    let v = &json[0]["variants"];
    assert_eq!(json[0]["scorer"], "pickscore");
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert!(v[0]["win_rate"].is_null() && v[1]["win_rate"]["value"].is_f64());
    let mean = |i: usize| v[i]["mean"]["value"].as_f64().unwrap();
    // The merged UNet and the LoRA on the base are the same model: the same images, the same scores.
    assert!((mean(1) - mean(2)).abs() < 1e-3 * mean(1).abs().max(1.0), "{v}");
    for f in ["report.md", "scores.png", "grid.png"] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // Another scorer: nothing is generated again.
    let stamp = std::fs::metadata(out.join("images/base/00000-s0.png")).unwrap().modified().unwrap();
    let again = eval(&[pick, format!("clip={}", tiny_clip.display())]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(std::fs::metadata(out.join("images/base/00000-s0.png")).unwrap().modified().unwrap(), stamp);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("## pickscore") && report.contains("## clip") && report.contains("| lora | 4 |"),
        "{report}"
    );

    // An empty prompt suite is an error.
    std::fs::write(&prompts, "\n\n").unwrap();
    let empty = eval(&[format!("clip={}", tiny_clip.display())]);
    assert!(!empty.status.success() && String::from_utf8_lossy(&empty.stderr).contains("an empty prompt suite"));
    let _ = std::fs::remove_dir_all(&dir);
}
