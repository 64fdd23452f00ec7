//! Bad input gets an error that names what is wrong.
mod common;

use mapo::device::{Precision, select};
use mapo::models::unet::{UNet2DConditionModel, UNetConfig};
use mapo::models::weights::Weights;

#[test]
fn devices_not_compiled_in_name_the_feature() {
    if !cfg!(feature = "cuda") {
        let Err(err) = select(Some("cuda")) else { panic!("cuda is not compiled in") };
        let err = err.to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
    let Err(err) = select(Some("tpu")) else { panic!("no such backend") };
    let err = err.to_string();
    assert!(err.contains("unknown device \"tpu\""), "{err}");
    let err = "f8".parse::<Precision>().unwrap_err().to_string();
    assert!(err.contains("expected f32, bf16 or f16"), "{err}");
}

#[test]
fn unsupported_unet_configs_say_which_key() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-sdxl/unet/config.json"))
            .unwrap();
    let mut raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    raw["class_embed_type"] = "timestep".into();
    let config: UNetConfig = serde_json::from_value(raw.clone()).unwrap();
    let w = Weights::shapes_only(&select(Some("flex")).unwrap().device);
    let err = UNet2DConditionModel::load(&config, &w).expect_err("unsupported").to_string();
    assert!(err.contains("class_embed_type"), "{err}");

    raw["class_embed_type"] = serde_json::Value::Null;
    raw["block_out_channels"] = serde_json::json!([16, 32, 60]);
    let config: UNetConfig = serde_json::from_value(raw).unwrap();
    let err = UNet2DConditionModel::load(&config, &w).expect_err("indivisible").to_string();
    assert!(err.contains("not divisible by norm_num_groups"), "{err}");
}

/// `mapo forward unet` with inputs that used to panic (or segfault, for an empty batch)
/// inside Burn: each is now an error naming the tensor, with exit code 1, before any op.
#[test]
fn bad_unet_inputs_are_errors_naming_the_tensor() {
    use burn::tensor::TensorData;
    let cases = common::open("unet_cases.safetensors");
    let base: Vec<(String, TensorData)> = ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
        .iter()
        .map(|n| (n.to_string(), cases.get(&format!("case0.{n}")).unwrap().to_data_any().unwrap()))
        .collect();
    let dir = std::env::temp_dir().join(format!("mapo-bad-unet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let zeros = |shape: Vec<usize>| TensorData::new(vec![0f32; shape.iter().product()], shape);
    let ehs = base[2].1.shape().to_vec();
    let bad: Vec<(&str, TensorData, &str)> = vec![
        ("encoder_hidden_states", zeros(vec![0, ehs[1], ehs[2]]), "encoder_hidden_states: expected shape"),
        ("encoder_hidden_states", zeros(vec![ehs[0], ehs[1], ehs[2] + 1]), "encoder_hidden_states: expected shape"),
        ("text_embeds", zeros(vec![1, 7]), "text_embeds: expected shape"),
        ("time_ids", zeros(vec![ehs[0], 5]), "time_ids: expected shape"),
        ("sample", zeros(vec![ehs[0], 3, 8, 8]), "sample: expected shape"),
        ("timestep", TensorData::new(vec![f32::NAN; ehs[0]], [ehs[0]]), "timestep: NaN is outside"),
        ("timestep", TensorData::new(vec![1e30f32; ehs[0]], [ehs[0]]), "is outside [0, 10000]"),
    ];
    for (i, (name, data, want)) in bad.into_iter().enumerate() {
        let inp = dir.join(format!("in{i}.safetensors"));
        let tensors = base.iter().map(|(n, d)| (n.clone(), if n == name { data.clone() } else { d.clone() })).collect();
        mapo::models::io::write_tensors(&inp, tensors).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
            .args(["forward", "unet", "--device", "flex", "--inputs", inp.to_str().unwrap()])
            .args(["--model", common::fixtures().join("tiny-sdxl").to_str().unwrap()])
            .args(["--out", dir.join("out.safetensors").to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i} ({name}): not a clean error exit: {err}");
        assert!(err.contains(want), "case {i} ({name}): {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
