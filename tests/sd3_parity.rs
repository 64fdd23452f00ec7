//! SD3's transformer (`SD3Transformer2DModel`, MMDiT) against diffusers 0.42 on two tiny
//! configs: SD3 (plain joint blocks) and SD3.5 (RMS q/k norms, MMDiT-X dual attention in
//! blocks 0 and 1), each with a non-square and a square latent, from
//! tools/golden/make_sd3_transformer.py. Tolerance: 1e-5 relative to the output's max
//! magnitude (measured on flex: 3.4e-7 at most).

mod common;

use burn::tensor::{DType, Tensor, TensorData};
use common::*;
use mapo::models::sd3::SD3Transformer2DModel;
use mapo::models::sd3::embed::sincos_table;

fn transformer(variant: &str) -> SD3Transformer2DModel {
    let dir = fixtures().join(format!("tiny-{variant}/transformer"));
    SD3Transformer2DModel::from_dir(&dir, &device(), DType::F32).unwrap().0
}

#[test]
fn sd3_transformer_matches_diffusers() {
    let device = device();
    let cases = open("sd3_transformer_cases.safetensors");
    for variant in ["sd3", "sd35"] {
        let model = transformer(variant);
        for case in ["case0", "case1"] {
            let key = |n: &str| format!("{variant}.{case}.{n}");
            let x = cases.float::<4>(&key("hidden_states"), &device, DType::F32).unwrap();
            let context = cases.float::<3>(&key("encoder_hidden_states"), &device, DType::F32).unwrap();
            let pooled = cases.float::<2>(&key("pooled_projections"), &device, DType::F32).unwrap();
            let t = cases.float::<1>(&key("timestep"), &device, DType::F32).unwrap();
            let want = cases.float::<4>(&key("sample"), &device, DType::F32).unwrap();
            let [_, _, h, w] = x.dims();
            model.check_latents(h, w).unwrap();
            assert_close(&format!("{variant} {case}"), model.forward(x, t, context, pooled), want, 1e-5);
        }
    }
}

/// The position table a folder without `pos_embed.pos_embed` gets is diffusers' own.
#[test]
fn sd3_position_table_matches_diffusers() {
    let device = device();
    let cases = open("sd3_transformer_cases.safetensors");
    let want = cases.float::<2>("sd35.pos_embed_full", &device, DType::F32).unwrap();
    let got = Tensor::<2>::from_data(TensorData::new(sincos_table(16, 12, 4), [144, 16]), (&device, DType::F32));
    assert_close("pos_embed", got, want, 1e-6);
}

/// Latents the position table cannot place are an error, not a panic.
#[test]
fn sd3_transformer_refuses_latents_it_cannot_place() {
    let model = transformer("sd3");
    assert!(model.check_latents(8, 6).is_ok());
    let odd = model.check_latents(7, 6).unwrap_err().to_string();
    assert!(odd.contains("patch size 2"), "{odd}");
    let big = model.check_latents(26, 8).unwrap_err().to_string();
    assert!(big.contains("pos_embed_max_size"), "{big}");
}

/// The real SD3 Medium, SD3.5 Medium and SD3.5 Large transformers (assets/sd3/ configs)
/// have exactly diffusers' parameters: counts and tensor names from a placeholder build (no
/// weights allocated) against diffusers on the meta device (tools/golden/count_sd3_params.py).
#[test]
fn real_sd3_configs_have_diffusers_parameter_counts() {
    use mapo::models::sd3::SD3TransformerConfig;
    use mapo::models::weights::Weights;
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("sd3_param_counts.json")).unwrap()).unwrap();
    for name in ["sd3_medium", "sd35_medium", "sd35_large"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("assets/sd3/{name}_transformer.json"));
        let config: SD3TransformerConfig = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let w = Weights::shapes_only(&device());
        drop(SD3Transformer2DModel::load(&config, &w).unwrap());
        let requested = w.requested();
        let params: usize = requested.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        eprintln!("{name}: {params} parameters in {} tensors", requested.len());
        assert_eq!(params as u64, want[name]["params"].as_u64().unwrap(), "{name}");
        // diffusers' state dict also holds the position table.
        assert_eq!(requested.len() as u64 + 1, want[name]["tensors"].as_u64().unwrap(), "{name}");
    }
}
