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
    let images = |v: &str| {
        let files = std::fs::read_dir(out.join("images").join(v)).unwrap();
        files.filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png")).count()
    };
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

/// The toy model end to end: a 2-step experiment makes its reference and one fine-tuned
/// run; `mapo eval` then compares them with the toy's own scorers on its grammar's
/// prompts, and its numbers are the toy scorer's readings of the PNGs it wrote.
#[test]
fn eval_runs_on_the_toy_model_with_its_scorers() {
    let dir = std::env::temp_dir().join(format!("mapo-eval-toy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("toy.toml");
    let runs = dir.join("runs");
    std::fs::write(
        &file,
        format!(
            "name = \"t\"\nruns_dir = {runs:?}\nmethods = [\"mapo\"]\n[model]\nbuiltin = \"toy\"\n[data]\n\
             generated = \"style\"\npairs_per_subject = 1\n[pretrain]\nsteps = 2\nbatch_size = 4\n[train]\nsteps = 2\n\
             batch_size = 2\n[eval]\nevery = 2\nseeds = 1\nsteps = 2\nerror_pairs = 4\n"
        ),
    )
    .unwrap();
    let exp = run_mapo(&["experiment", file.to_str().unwrap(), "--device", &device_name()]);
    assert!(exp.status.success(), "{}", String::from_utf8_lossy(&exp.stderr));
    let cache = std::fs::read_dir(runs.join("_cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("toy-reference-"));
    let reference = cache.expect("a toy reference").join("pretrain");
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "a red circle on a light background\na blue square on a dark background\n").unwrap();
    let out = dir.join("eval");
    let eval = |prompts: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
            .args(["eval", "--model", reference.to_str().unwrap(), "--prompts", prompts.to_str().unwrap()])
            .args(["--variant", "reference=base"])
            .args(["--variant", &format!("mapo=unet:{}", runs.join("t/mapo-s0/unet").display())])
            .args(["--scorer", "style_b", "--scorer", "fidelity", "--seeds", "2", "--steps", "3"])
            .args(["--device", &device_name(), "--out", out.to_str().unwrap()])
            .env("MAPO_QUIET_DEVICE", "1")
            .output()
            .unwrap()
    };
    let done = eval(&prompts);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(json[0]["scorer"], "style_b");
    assert_eq!(json[1]["scorer"], "fidelity");
    let captions = ["a red circle on a light background", "a blue square on a dark background"];
    for (v, name) in ["reference", "mapo"].iter().enumerate() {
        let (mut striped, mut faithful) = (0.0, 0.0);
        for (p, caption) in captions.iter().enumerate() {
            for s in 0..2 {
                let img = image::open(out.join(format!("images/{name}/{p:05}-s{s}.png"))).unwrap().to_rgb8();
                assert_eq!(img.dimensions(), (16, 16));
                let px: Vec<f32> =
                    (0..3).flat_map(|c| img.pixels().map(move |q| q.0[c] as f32 / 255.0 * 2.0 - 1.0)).collect();
                let r = mapo::toy::score::read(&px, 16);
                striped += f64::from(u8::from(r.style == mapo::toy::data::Style::Striped)) / 4.0;
                let want = mapo::toy::data::Subject::parse(caption).unwrap();
                faithful += f64::from(u8::from(r.subject == Some(want))) / 4.0;
            }
        }
        assert_eq!(json[0]["variants"][v]["n"], 4);
        assert_eq!(json[0]["variants"][v]["mean"]["value"].as_f64().unwrap(), striped, "{name} style_b");
        assert_eq!(json[1]["variants"][v]["mean"]["value"].as_f64().unwrap(), faithful, "{name} fidelity");
    }
    assert!(out.join("grid.png").is_file() && out.join("scores.png").is_file());

    // A prompt outside the toy's grammar is refused by name (in a fresh folder: this one's
    // images were made for other prompts, which is refused before).
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::write(&prompts, "a purple hexagon\n").unwrap();
    let bad = eval(&prompts);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && stderr.contains("purple"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A parquet prompt suite: the caption column, each caption once, in first-seen order.
#[test]
fn prompt_suites_read_text_jsonl_and_parquet_captions() {
    use mapo::eval::suite::read_prompts;
    let parquet = fixtures().join("parquet").join("pairs.parquet");
    let prompts = read_prompts(&parquet, None).unwrap();
    assert_eq!(prompts.len(), 30);
    assert_eq!(prompts[1], "pair 1: a gradient with a square");
    let err = read_prompts(&parquet, Some("prompt")).unwrap_err().to_string();
    assert!(err.contains("pairs.parquet") && err.contains("no column \"prompt\""), "{err}");
    // A folder of two copies: 60 rows, each caption kept once, in the first file's order.
    let dir = std::env::temp_dir().join(format!("mapo-suite-{}", std::process::id()));
    let split = dir.join("split");
    std::fs::create_dir_all(&split).unwrap();
    for name in ["a.parquet", "b.parquet"] {
        std::fs::copy(&parquet, split.join(name)).unwrap();
    }
    assert_eq!(read_prompts(&split, None).unwrap(), prompts);
    let jsonl = dir.join("p.jsonl");
    std::fs::write(&jsonl, "{\"caption\": \" a cat \"}\n\n{\"prompt\": \"a dog\"}\n").unwrap();
    assert_eq!(read_prompts(&jsonl, None).unwrap(), ["a cat", "a dog"]);
    std::fs::write(&jsonl, "{\"text\": \"a cat\"}\n").unwrap();
    let err = read_prompts(&jsonl, None).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("\"prompt\" or \"caption\""), "{err}");
    assert_eq!(read_prompts(&jsonl, Some("text")).unwrap(), ["a cat"]);
    let _ = std::fs::remove_dir_all(&dir);
}
