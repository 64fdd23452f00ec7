//! Weights I/O: load → save → load round trip, dtype conversion, and load errors that
//! name every bad tensor.

mod common;

use burn::tensor::DType;
use common::*;
use mapo::models::folder::save_component;
use mapo::models::io::{SafeTensorFiles, write_tensors};
use mapo::models::named::for_each_param;
use mapo::models::unet::UNet2DConditionModel;
use mapo::models::vae::AutoencoderKL;

fn tmpdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mapo-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn all_values<M: burn::module::Module>(m: &M) -> Vec<(String, Vec<f32>)> {
    let mut v = Vec::new();
    for_each_param(m, |name, t, _| v.push((name, to_vec(t))));
    v
}

#[test]
fn vae_load_save_load_is_identical() {
    let device = device();
    let src = fixtures().join("tiny-sdxl/vae");
    let (vae, _) = AutoencoderKL::from_dir(&src, &device, DType::F32).unwrap();
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let out = tmpdir("vae-roundtrip").join("vae");
    save_component(&vae, &raw, &out, DType::F32).unwrap();
    let (again, _) = AutoencoderKL::from_dir(&out, &device, DType::F32).unwrap();
    assert_eq!(all_values(&vae), all_values(&again));
    // The bf16 file was widened exactly: saving back as bf16 reproduces the stored bits.
    let out16 = out.with_file_name("vae16");
    save_component(&vae, &raw, &out16, DType::BF16).unwrap();
    let a = SafeTensorFiles::open_component(&src, &["diffusion_pytorch_model"]).unwrap();
    let b = SafeTensorFiles::open_component(&out16, &["diffusion_pytorch_model"]).unwrap();
    for name in a.names() {
        assert_eq!(a.get(name).unwrap().bytes, b.get(name).unwrap().bytes, "{name}");
    }
    std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
}

#[test]
fn unet_loads_into_bf16() {
    let device = device();
    let (unet, _) = UNet2DConditionModel::from_dir(&fixtures().join("tiny-sdxl/unet"), &device, DType::BF16).unwrap();
    assert_eq!(unet.conv_in.weight.val().dtype(), DType::BF16);
}

#[test]
fn bad_weights_are_reported_together() {
    let device = device();
    let src = fixtures().join("tiny-sdxl/vae");
    let files = SafeTensorFiles::open_component(&src, &["diffusion_pytorch_model"]).unwrap();
    let dir = tmpdir("bad-weights");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let mut tensors = Vec::new();
    for name in files.names() {
        let data = files.get(name).unwrap().to_data().unwrap().convert::<f32>();
        match name {
            "encoder.conv_in.weight" => continue, // missing
            "decoder.conv_out.bias" => {
                // wrong shape
                tensors.push((name.to_string(), burn::tensor::TensorData::new(vec![0f32; 5], [5])));
            }
            _ => tensors.push((name.to_string(), data)),
        }
    }
    tensors.push(("encoder.extra.weight".into(), burn::tensor::TensorData::new(vec![0f32; 2], [2])));
    write_tensors(&dir.join("diffusion_pytorch_model.safetensors"), tensors).unwrap();
    let err = AutoencoderKL::from_dir(&dir, &device, DType::F32).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("encoder.conv_in.weight: expected [16, 3, 3, 3]"), "{msg}");
    assert!(msg.contains("decoder.conv_out.bias: expected [3], found [5]"), "{msg}");
    assert!(msg.contains("encoder.extra.weight: [2]"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_weights_file_names_the_folder() {
    let dir = tmpdir("no-weights");
    std::fs::copy(fixtures().join("tiny-sdxl/vae/config.json"), dir.join("config.json")).unwrap();
    let err = AutoencoderKL::from_dir(&dir, &device(), DType::F32).unwrap_err();
    assert!(format!("{err:#}").contains("no weights in"), "{err:#}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mapo random-model` writes folders that load back, for every component kind
/// (transformers' `model.safetensors` layout for the text encoders).
#[test]
fn random_model_folders_load_back() {
    let dir = tmpdir("random-model");
    for (component, config) in [
        ("unet", "tiny-sdxl/unet/config.json"),
        ("vae", "tiny-sdxl/vae/config.json"),
        ("text_encoder", "tiny-sdxl/text_encoder/config.json"),
        ("text_encoder_2", "tiny-sdxl/text_encoder_2/config.json"),
    ] {
        let out = dir.join(component);
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
            .args(["random-model", component, "--config", fixtures().join(config).to_str().unwrap()])
            .args(["--out", out.to_str().unwrap(), "--dtype", "bf16"])
            .status()
            .unwrap();
        assert!(status.success(), "{component}");
    }
    let device = device();
    UNet2DConditionModel::from_dir(&dir.join("unet"), &device, DType::F32).unwrap();
    AutoencoderKL::from_dir(&dir.join("vae"), &device, DType::F32).unwrap();
    mapo::models::clip::ClipTextModel::from_dir(&dir.join("text_encoder"), &device, DType::F32, false).unwrap();
    mapo::models::clip::ClipTextModel::from_dir(&dir.join("text_encoder_2"), &device, DType::F32, true).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
