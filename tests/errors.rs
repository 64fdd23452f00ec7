//! Bad input gets an error that names what is wrong.

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
