//! The real SDXL UNet and VAE, built from their configs, ask for exactly the tensors
//! (names and shapes) that diffusers has, in number and in total parameter count.
//! Reference: tests/fixtures/sdxl_*_keys.json from tools/golden/real_key_trees.py.

mod common;

use std::collections::BTreeMap;

use common::*;
use mapo::models::unet::{UNet2DConditionModel, UNetConfig};
use mapo::models::vae::{AutoencoderKL, VaeConfig};
use mapo::models::weights::Weights;

type KeyTree = BTreeMap<String, Vec<usize>>;

fn reference(name: &str) -> (serde_json::Value, usize, KeyTree) {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| (kv[0].as_str().unwrap().to_string(), serde_json::from_value(kv[1].clone()).unwrap()))
        .collect();
    (v["config"].clone(), v["params"].as_u64().unwrap() as usize, keys)
}

fn compare(what: &str, requested: Vec<(String, Vec<usize>)>, want: &KeyTree, want_params: usize) {
    let got: KeyTree = requested.into_iter().collect();
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{what}: missing {missing:?}, extra {extra:?}");
    for (k, shape) in want {
        assert_eq!(&got[k], shape, "{what}: shape of {k}");
    }
    let params: usize = got.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(params, want_params, "{what}: parameter count");
}

#[test]
fn sdxl_unet_key_tree_and_parameter_count() {
    let (config, params, keys) = reference("sdxl_unet_keys.json");
    assert_eq!(params, 2_567_463_684);
    let config: UNetConfig = serde_json::from_value(config).unwrap();
    let w = Weights::shapes_only(&device());
    UNet2DConditionModel::load(&config, &w).unwrap();
    compare("sdxl unet", w.requested(), &keys, params);
}

#[test]
fn sdxl_vae_key_tree_and_parameter_count() {
    let (config, params, keys) = reference("sdxl_vae_keys.json");
    assert_eq!(params, 83_653_863);
    let config: VaeConfig = serde_json::from_value(config).unwrap();
    let w = Weights::shapes_only(&device());
    AutoencoderKL::load(&config, &w).unwrap();
    compare("sdxl vae", w.requested(), &keys, params);
}

/// The module tree's own parameter names (what saving writes) equal the loaded keys.
#[test]
fn module_tree_names_are_diffusers_names() {
    let device = device();
    let dir = fixtures().join("tiny-sdxl/unet");
    let (unet, _) = UNet2DConditionModel::from_dir(&dir, &device, burn::tensor::DType::F32).unwrap();
    let files = mapo::models::io::SafeTensorFiles::open_component(&dir, &["diffusion_pytorch_model"]).unwrap();
    let file_keys: KeyTree = files.names().map(|n| (n.to_string(), files.shape(n).unwrap().to_vec())).collect();
    let module_keys: KeyTree = mapo::models::named::param_shapes(&unet).into_iter().collect();
    assert_eq!(module_keys, file_keys);
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tiny-sdxl/param_counts.json")).unwrap())
            .unwrap();
    assert_eq!(mapo::models::named::param_count(&unet) as u64, counts["unet"].as_u64().unwrap());
}
