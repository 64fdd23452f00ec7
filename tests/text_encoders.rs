//! Both SDXL text encoders against transformers (tools/golden/make_text_encoders.py):
//! outputs within 1e-4 relative to their max magnitude (f32), real-config key trees and
//! parameter counts, and `mapo forward text-encoder[-2]`.

mod common;

use std::collections::BTreeMap;

use burn::tensor::DType;
use common::*;
use mapo::models::clip::{ClipTextConfig, ClipTextModel};
use mapo::models::weights::Weights;

#[test]
fn text_encoders_match_transformers() {
    let device = device();
    let f = open("text_encoders.safetensors");
    let want = |k: &str| f.float::<3>(k, &device, DType::F32).unwrap();
    let dir = fixtures().join("tiny-sdxl");

    let (te1, _) = ClipTextModel::from_dir(&dir.join("text_encoder"), &device, DType::F32, false).unwrap();
    let out = te1.forward(f.int::<2>("te1.input_ids", &device).unwrap());
    assert_close("te1 penultimate", out.penultimate, want("te1.hidden_states"), 1e-4);
    assert_close("te1 last_hidden_state", out.last_hidden_state, want("te1.last_hidden_state"), 1e-4);
    assert_close("te1 pooled (argmax)", out.pooled, f.float::<2>("te1.pooled", &device, DType::F32).unwrap(), 1e-4);

    let (te2, _) = ClipTextModel::from_dir(&dir.join("text_encoder_2"), &device, DType::F32, true).unwrap();
    let out = te2.forward(f.int::<2>("te2.input_ids", &device).unwrap());
    assert_close("te2 penultimate", out.penultimate, want("te2.hidden_states"), 1e-4);
    let embeds = out.text_embeds.expect("projection");
    assert_close(
        "te2 text_embeds (first EOS)",
        embeds,
        f.float::<2>("te2.text_embeds", &device, DType::F32).unwrap(),
        1e-4,
    );
}

/// Key trees compared without the `text_model.` prefix, which transformers writes for one
/// class and not the other (both spellings load).
fn strip(key: &str) -> String {
    key.strip_prefix("text_model.").unwrap_or(key).to_string()
}

fn check_real(file: &str, with_projection: bool, want_params: usize) {
    let text = std::fs::read_to_string(fixtures().join(file)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["params"].as_u64().unwrap() as usize, want_params);
    let want: BTreeMap<String, Vec<usize>> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (strip(kv[0].as_str().unwrap()), serde_json::from_value(kv[1].clone()).unwrap()))
        .filter(|(k, _): &(String, Vec<usize>)| !k.ends_with("position_ids"))
        .collect();
    let config: ClipTextConfig = serde_json::from_value(v["config"].clone()).unwrap();
    let w = Weights::shapes_only(&device());
    ClipTextModel::load(&config, &w, with_projection).unwrap();
    let got: BTreeMap<String, Vec<usize>> = w.requested().into_iter().map(|(k, v)| (strip(&k), v)).collect();
    assert_eq!(got, want, "{file}");
    assert_eq!(got.values().map(|s| s.iter().product::<usize>()).sum::<usize>(), want_params);
}

#[test]
fn real_text_encoder_key_trees_and_counts() {
    check_real("sdxl_text_encoder_keys.json", false, 123_060_480);
    check_real("sdxl_text_encoder_2_keys.json", true, 694_659_840);
}

#[test]
fn forward_text_encoder_cli() {
    let f = open("text_encoders.safetensors");
    let dir = std::env::temp_dir().join(format!("mapo-te-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let device = device();
    for (component, prefix, second) in
        [("text-encoder", "te1", "last_hidden_state"), ("text-encoder-2", "te2", "text_embeds")]
    {
        let inp = dir.join(format!("{prefix}.safetensors"));
        let ids = f.get(&format!("{prefix}.input_ids")).unwrap().to_data_any().unwrap();
        mapo::models::io::write_tensors(&inp, vec![("input_ids".into(), ids)]).unwrap();
        let out = dir.join(format!("{prefix}-out.safetensors"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
            .args(["forward", component, "--device", "flex", "--model", fixtures().join("tiny-sdxl").to_str().unwrap()])
            .args(["--inputs", inp.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(status.success());
        let got = mapo::models::io::SafeTensorFiles::open_file(&out).unwrap();
        let want = f.float::<3>(&format!("{prefix}.hidden_states"), &device, DType::F32).unwrap();
        assert_close(
            &format!("{component} hidden_states"),
            got.float::<3>("hidden_states", &device, DType::F32).unwrap(),
            want,
            1e-4,
        );
        assert!(got.get(second).is_some(), "{component}: no {second}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// transformers 5 may write the keys without `text_model.`: both layouts load the same.
#[test]
fn keys_without_text_model_prefix_load_too() {
    let device = device();
    let src = fixtures().join("tiny-sdxl/text_encoder_2");
    let dir = std::env::temp_dir().join(format!("mapo-te-noprefix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let files = mapo::models::io::SafeTensorFiles::open_file(&src.join("model.safetensors")).unwrap();
    let tensors = files
        .names()
        .map(|n| (n.strip_prefix("text_model.").unwrap_or(n).to_string(), files.get(n).unwrap().to_data().unwrap()))
        .collect();
    mapo::models::io::write_tensors(&dir.join("model.safetensors"), tensors).unwrap();
    let f = open("text_encoders.safetensors");
    let (te2, _) = ClipTextModel::from_dir(&dir, &device, DType::F32, true).unwrap();
    let out = te2.forward(f.int::<2>("te2.input_ids", &device).unwrap());
    let want = f.float::<2>("te2.text_embeds", &device, DType::F32).unwrap();
    assert_close("te2 without prefix", out.text_embeds.unwrap(), want, 1e-4);
    std::fs::remove_dir_all(&dir).unwrap();
}
