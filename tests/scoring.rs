//! Reward-model scoring against transformers (fixtures: tools/golden/make_clip_scores.py):
//! the CLIP processor's pixels (PIL's bicubic resize reproduced), the CLIPModel's image and
//! text embeddings, and `mapo score` for PickScore, CLIP score and the LAION aesthetic
//! predictor (a torch pickle), skipping an image that does not decode.

mod common;

use burn::tensor::{DType, Tensor, TensorData};
use common::*;
use mapo::eval::preprocess::{ClipImageProcessor, read_rgb};
use mapo::models::clip::model::ClipModel;

fn tiny() -> std::path::PathBuf {
    fixtures().join("tiny-clip")
}

/// The images of pairs.jsonl that decode, in order.
fn image_paths() -> Vec<std::path::PathBuf> {
    let text = std::fs::read_to_string(tiny().join("pairs.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["id"] != 99)
        .map(|v| tiny().join(v["image"].as_str().unwrap()))
        .collect()
}

#[test]
fn pixels_match_the_pil_processor() {
    let processor = ClipImageProcessor::from_dir(&tiny()).unwrap();
    let want = open("clip_scores.safetensors").float::<4>("pixel_values", &device(), DType::F32).unwrap();
    let want = to_vec(want);
    let per = want.len() / image_paths().len();
    for (i, path) in image_paths().iter().enumerate() {
        let img = read_rgb(path).unwrap();
        let (got, shape) = processor.pixels(&img).unwrap();
        assert_eq!(shape, [32, 32]);
        let w = &want[i * per..(i + 1) * per];
        let err = got.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // One 8-bit level is 1/255/std ≈ 0.015 here: anything above rounding is a
        // resampling difference.
        eprintln!("{}: max |Δ| {err:.2e}", path.display());
        assert!(err < 1e-5, "{}: pixels differ from transformers + PIL by {err}", path.display());
    }
}

#[test]
fn clip_model_embeddings_match_transformers() {
    let device = device();
    let (model, _) = ClipModel::from_dir(&tiny(), &device, DType::F32).unwrap();
    let f = open("clip_scores.safetensors");
    let pixels = f.float::<4>("pixel_values", &device, DType::F32).unwrap();
    let ids = f.int::<2>("input_ids", &device).unwrap();
    assert_close(
        "image_embeds",
        model.image_embeds(pixels),
        f.float::<2>("image_embeds", &device, DType::F32).unwrap(),
        1e-5,
    );
    assert_close(
        "text_embeds",
        model.text_embeds(ids),
        f.float::<2>("text_embeds", &device, DType::F32).unwrap(),
        1e-5,
    );
}

#[test]
fn mapo_score_gives_pickscore_and_clip_score_and_skips_bad_images() {
    let dir = std::env::temp_dir().join(format!("mapo-score-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = open("clip_scores.safetensors");
    let aesthetic = fixtures().join("tiny-aesthetic.pth");
    let tiny_dir = tiny();
    let clip_dir = tiny_dir.to_str().unwrap();
    for (scorer, model, extra) in [
        ("pickscore", clip_dir, vec![]),
        ("clip", clip_dir, vec![]),
        // A torch pickle (the predictor's .pth) on the CLIP folder's image embeddings.
        ("aesthetic", aesthetic.to_str().unwrap(), vec!["--clip", clip_dir]),
    ] {
        let out = dir.join(format!("{scorer}.jsonl"));
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
            .args(["score", "--scorer", scorer, "--model", model, "--batch", "4"])
            .args(extra)
            .args(["--pairs", tiny().join("pairs.jsonl").to_str().unwrap(), "--out", out.to_str().unwrap()])
            .args(["--device", &device_name()])
            .env("MAPO_QUIET_DEVICE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "{stderr}");
        assert!(stderr.contains("broken.png") && stderr.contains("1 skipped"), "{stderr}");
        let rows: Vec<serde_json::Value> =
            std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 8, "every row, in order");
        assert!(rows[3]["score"].is_null() && rows[3]["error"].is_string() && rows[3]["id"] == 99);
        let got: Vec<f32> =
            rows.iter().filter(|r| r["id"] != 99).map(|r| r["score"].as_f64().unwrap() as f32).collect();
        let want = to_vec(f.float::<1>(scorer, &device(), DType::F32).unwrap());
        let n = got.len();
        assert_close(
            scorer,
            Tensor::<1>::from_data(TensorData::new(got, [n]), &device()),
            Tensor::<1>::from_data(TensorData::new(want, [n]), &device()),
            1e-4,
        );
    }
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["score", "--scorer", "clip", "--model", tiny().to_str().unwrap()])
        .args(["--pairs", empty.to_str().unwrap(), "--out", dir.join("x.jsonl").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!run.status.success() && String::from_utf8_lossy(&run.stderr).contains("no rows to score"));
    let not_pth = tiny().join("config.json");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["score", "--scorer", "aesthetic", "--model", not_pth.to_str().unwrap(), "--clip", clip_dir])
        .args(["--pairs", tiny().join("pairs.jsonl").to_str().unwrap(), "--out", dir.join("y.jsonl").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("config.json: not a readable PyTorch checkpoint"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real towers' sizes, counted from the configs (docs/design.md §9 gives them to check, not to
/// trust): LAION's ViT-H/14 (PickScore, HPS) and OpenAI's ViT-L/14 (the aesthetic MLP's).
#[test]
fn real_vision_towers_have_the_published_sizes() {
    use mapo::models::clip::vision::{ClipVisionConfig, ClipVisionModel};
    use mapo::models::nn::Linear;
    use mapo::models::weights::Weights;
    for (name, json, projection, want) in [
        (
            "ViT-H-14",
            r#"{"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
               "image_size": 224, "patch_size": 14, "hidden_act": "gelu"}"#,
            1024,
            632_076_800usize,
        ),
        (
            "ViT-L-14",
            r#"{"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
               "image_size": 224, "patch_size": 14}"#,
            768,
            303_966_208,
        ),
    ] {
        let c: ClipVisionConfig = serde_json::from_str(json).unwrap();
        let w = Weights::shapes_only(&device());
        let _tower = ClipVisionModel::load(&c, &w.pp("vision_model")).unwrap();
        let _proj = Linear::load(&w.pp("visual_projection"), c.hidden_size, projection, false);
        let count: usize = w.requested().iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(count, want, "{name}");
    }
}

/// HPS: an open_clip checkpoint (torch pickle `{'state_dict': ...}`, fused attention
/// projections) with open_clip's own preprocessing, against open_clip (tools/golden/make_hps.py).
#[test]
fn hps_matches_open_clip() {
    let processor = ClipImageProcessor::open_clip(32);
    let f = open("hps_scores.safetensors");
    let want = to_vec(f.float::<4>("pixel_values", &device(), DType::F32).unwrap());
    let per = want.len() / image_paths().len();
    for (i, path) in image_paths().iter().enumerate() {
        let (got, _) = processor.pixels(&read_rgb(path).unwrap()).unwrap();
        let err = got.iter().zip(&want[i * per..(i + 1) * per]).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-5, "{}: pixels differ from open_clip's transform by {err}", path.display());
    }
    let dir = std::env::temp_dir().join(format!("mapo-hps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("hps.jsonl");
    let (pt, config, tok) =
        (fixtures().join("tiny-hps.pt"), fixtures().join("tiny-hps.json"), fixtures().join("tiny-sdxl/tokenizer"));
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["score", "--scorer", "hps", "--model", pt.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .args(["--tokenizer", tok.to_str().unwrap(), "--device", &device_name()])
        .args(["--pairs", tiny().join("pairs.jsonl").to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let got: Vec<f32> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["id"] != 99)
        .map(|r| r["score"].as_f64().unwrap() as f32)
        .collect();
    let want = to_vec(f.float::<1>("hps", &device(), DType::F32).unwrap());
    let n = got.len();
    assert_close(
        "hps",
        Tensor::<1>::from_data(TensorData::new(got, [n]), &device()),
        Tensor::<1>::from_data(TensorData::new(want, [n]), &device()),
        1e-4,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An open_clip checkpoint that does not fit its config: the error names the checkpoint
/// and the tensor, with both shapes; a deeper config names the layer the file lacks.
#[test]
fn open_clip_checkpoints_that_do_not_fit_the_config_name_the_tensor() {
    let dir = std::env::temp_dir().join(format!("mapo-hps-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pt = fixtures().join("tiny-hps.pt");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-hps.json")).unwrap()).unwrap();
    let score = |config: &serde_json::Value| {
        let file = dir.join("config.json");
        std::fs::write(&file, config.to_string()).unwrap();
        let out = dir.join("out.jsonl");
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
            .args(["score", "--scorer", "hps", "--model", pt.to_str().unwrap(), "--config", file.to_str().unwrap()])
            .args(["--tokenizer", fixtures().join("tiny-sdxl/tokenizer").to_str().unwrap()])
            .args(["--device", &device_name(), "--pairs", tiny().join("pairs.jsonl").to_str().unwrap()])
            .args(["--out", out.to_str().unwrap()])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(!run.status.success() && !out.exists(), "a misfitting checkpoint was scored");
        String::from_utf8_lossy(&run.stderr).into_owned()
    };
    let mut wider = config.clone();
    wider["embed_dim"] = 32.into();
    let err = score(&wider);
    assert!(err.contains("tiny-hps.pt") && err.contains("projection") && err.contains("24"), "{err}");
    let mut deeper = config.clone();
    deeper["vision_cfg"]["layers"] = 3.into();
    let err = score(&deeper);
    assert!(err.contains("tiny-hps.pt") && err.contains("layers.2"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
