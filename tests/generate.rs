//! The tiny SDXL pipeline against diffusers' StableDiffusionXLPipeline
//! (tools/golden/make_pipeline.py): prompt embeddings within 1e-4, and the final latents
//! of a 6-step, guidance-5, non-square generation from the same initial latents within
//! 1e-3 (relative to their max magnitude), through `mapo generate`.

mod common;

use std::process::Command;

use burn::tensor::DType;
use common::*;
use mapo::models::io::{SafeTensorFiles, write_tensors};
use mapo::sample::pipeline::SdxlPipeline;

fn spec() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("pipeline.json")).unwrap()).unwrap()
}

#[test]
fn prompt_encoding_matches_diffusers() {
    let device = device();
    let pipe = SdxlPipeline::load(&fixtures().join("tiny-sdxl"), None, &device, DType::F32).unwrap();
    let f = open("pipeline.safetensors");
    let (context, pooled) = pipe.encode_prompt(spec()["prompt"].as_str().unwrap());
    assert_close("prompt_embeds", context, f.float::<3>("prompt_embeds", &device, DType::F32).unwrap(), 1e-4);
    assert_close(
        "pooled_prompt_embeds",
        pooled,
        f.float::<2>("pooled_prompt_embeds", &device, DType::F32).unwrap(),
        1e-4,
    );
}

#[test]
fn generate_matches_diffusers_pipeline() {
    let s = spec();
    let dir = std::env::temp_dir().join(format!("mapo-generate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = open("pipeline.safetensors");
    let init = dir.join("init.safetensors");
    write_tensors(&init, vec![("latents".into(), f.get("init_latents").unwrap().to_data().unwrap())]).unwrap();
    let (latents, png) = (dir.join("final.safetensors"), dir.join("image.png"));
    let device_name = device_name();
    let out = Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["generate", "--model", fixtures().join("tiny-sdxl").to_str().unwrap()])
        .args(["--prompt", s["prompt"].as_str().unwrap(), "--steps", "6", "--guidance", "5"])
        .args(["--width", &s["width"].to_string(), "--height", &s["height"].to_string(), "--device", &device_name])
        .args(["--init-latents", init.to_str().unwrap(), "--save-latents", latents.to_str().unwrap()])
        .args(["--out", png.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let device = device();
    let got = SafeTensorFiles::open_file(&latents).unwrap().float::<4>("latents", &device, DType::F32).unwrap();
    assert_close("final latents", got, f.float::<4>("final_latents", &device, DType::F32).unwrap(), 1e-3);
    let img = std::fs::read(&png).unwrap();
    assert_eq!(&img[1..4], b"PNG");
    assert_eq!(u32::from_be_bytes(img[16..20].try_into().unwrap()), 48, "width");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tokenize_prints_both_id_lists() {
    let out = Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["tokenize", "--model", fixtures().join("tiny-sdxl").to_str().unwrap(), "--prompt", "a cat!"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (a, b) = (v["input_ids"].as_array().unwrap(), v["input_ids_2"].as_array().unwrap());
    assert_eq!((a.len(), b.len()), (77, 77));
    // tokenizer_2 pads with "!" (id 0), which is also how it spells the prompt's "!".
    assert_eq!(a[0], 998);
    assert_eq!(b[76], 0);
    assert_eq!(a[76], 999);
}

/// `--lora FILE` folds a diffusers-format LoRA file into the UNet: the same latents as
/// generating with the run's merged `unet/`, and different from the base model's.
#[test]
fn generate_with_lora_file_equals_the_merged_unet() {
    let dir = std::env::temp_dir().join(format!("mapo-generate-lora-{}", std::process::id()));
    let model = fixtures().join("tiny-sdxl");
    tiny_lora_run(&dir, "sft", "5e-2", "8x12");
    let latents = |name: &str, extra: &[&str]| {
        let out = dir.join(format!("{name}.safetensors"));
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", "a cat", "--steps", "3"];
        args.extend_from_slice(&["--width", "48", "--height", "32", "--device", "flex", "--seed", "5"]);
        let png = dir.join(format!("{name}.png"));
        args.extend_from_slice(&["--save-latents", out.to_str().unwrap(), "--out", png.to_str().unwrap()]);
        args.extend_from_slice(extra);
        run_mapo(&args);
        let device = device();
        SafeTensorFiles::open_file(&out).unwrap().float::<4>("latents", &device, DType::F32).unwrap()
    };
    let lora_file = dir.join("run/pytorch_lora_weights.safetensors");
    let merged_unet = dir.join("run/unet");
    let with_lora = latents("lora", &["--lora", lora_file.to_str().unwrap()]);
    let merged = latents("merged", &["--unet", merged_unet.to_str().unwrap()]);
    let base = latents("base", &[]);
    assert!(rel_err(&to_vec(with_lora.clone()), &to_vec(base)) > 1e-4, "the LoRA changed nothing");
    assert_close("--lora vs merged --unet", with_lora, merged, 1e-5);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Without --width/--height the image is the UNet's `sample_size` × the VAE's factor, as in
/// diffusers (tiny fixture: 16 × 4 = 64; SDXL: 128 × 8 = 1024).
#[test]
fn generate_defaults_to_the_models_size() {
    let dir = std::env::temp_dir().join(format!("mapo-generate-size-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("cat.png");
    let model = fixtures().join("tiny-sdxl");
    run_mapo(
        &["generate", "--model", model.to_str().unwrap(), "--prompt", "a cat", "--steps", "2", "--device", "flex"]
            .iter()
            .copied()
            .chain(["--out", png.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    let img = std::fs::read(&png).unwrap();
    assert_eq!(u32::from_be_bytes(img[16..20].try_into().unwrap()), 64, "width");
    assert_eq!(u32::from_be_bytes(img[20..24].try_into().unwrap()), 64, "height");
    std::fs::remove_dir_all(&dir).unwrap();
}
