//! FLUX.1's transformer (`FluxTransformer2DModel`) against diffusers 0.42 on two tiny
//! configs, [dev] (guidance embedded) and [schnell], from
//! tools/golden/make_flux_transformer.py: diffusers' own inputs (packed tokens, σ, explicit
//! ids, one case with non-standard ids so recomputed ids would fail), and the unpacked path
//! the pipeline and the trainer use. Tolerance: 1e-5 relative to the output's max magnitude.

mod common;

use burn::tensor::DType;
use common::*;
use mapo::models::denoiser::{Conditioning, Denoiser};
use mapo::models::flux::{FluxTransformer2DModel, pack};

fn transformer(variant: &str) -> FluxTransformer2DModel {
    let dir = fixtures().join(format!("tiny-flux-{variant}/transformer"));
    FluxTransformer2DModel::from_dir(&dir, &device(), DType::F32).unwrap().0
}

fn ids(cases: &mapo::models::io::SafeTensorFiles, name: &str) -> Vec<f32> {
    to_vec(cases.float::<2>(name, &device(), DType::F32).unwrap())
}

#[test]
fn flux_transformer_matches_diffusers() {
    let device = device();
    let cases = open("flux_transformer_cases.safetensors");
    for variant in ["dev", "schnell"] {
        let model = transformer(variant);
        assert_eq!(model.guidance_embeds(), variant == "dev");
        for case in ["case0", "case1"] {
            let key = |n: &str| format!("{variant}.{case}.{n}");
            let f3 = |n: &str| cases.float::<3>(&key(n), &device, DType::F32).unwrap();
            let guidance = (variant == "dev").then(|| cases.float::<1>(&key("guidance"), &device, DType::F32).unwrap());
            let got = model.forward(
                f3("hidden_states"),
                cases.float::<1>(&key("timestep"), &device, DType::F32).unwrap(),
                f3("encoder_hidden_states"),
                cases.float::<2>(&key("pooled_projections"), &device, DType::F32).unwrap(),
                &ids(&cases, &key("img_ids")),
                &ids(&cases, &key("txt_ids")),
                guidance,
            );
            assert_close(&format!("{variant} {case}"), got, f3("sample"), 1e-5);
        }
    }
}

/// Packing is `FluxPipeline._pack_latents` (and unpacking its inverse); the unpacked path
/// (σ·1000 as the model time, ids made as the pipeline makes them) gives the same velocity.
#[test]
fn flux_unpacked_path_matches_the_pipeline() {
    let device = device();
    let cases = open("flux_transformer_cases.safetensors");
    let unpacked = cases.float::<4>("dev.case0.unpacked", &device, DType::F32).unwrap();
    let packed = cases.float::<3>("dev.case0.hidden_states", &device, DType::F32).unwrap();
    assert_close("pack", pack::pack(unpacked.clone()), packed.clone(), 0.0);
    assert_close("unpack", pack::unpack(packed, 8, 6), unpacked.clone(), 0.0);
    assert_eq!(pack::image_ids(4, 3), ids(&cases, "dev.case0.img_ids"));

    let model = transformer("dev");
    let sigma = cases.float::<1>("dev.case0.timestep", &device, DType::F32).unwrap();
    let cond = Conditioning {
        context: cases.float::<3>("dev.case0.encoder_hidden_states", &device, DType::F32).unwrap(),
        pooled: cases.float::<2>("dev.case0.pooled_projections", &device, DType::F32).unwrap(),
        time_ids: None,
        guidance: Some(cases.float::<1>("dev.case0.guidance", &device, DType::F32).unwrap()),
    };
    let got = model.predict(unpacked, sigma.mul_scalar(1000.0), &cond);
    let want = cases.float::<4>("dev.case0.sample_unpacked", &device, DType::F32).unwrap();
    assert_close("unpacked", got, want, 1e-5);
}

/// The real FLUX.1 [dev] and [schnell] transformers (assets/flux/ configs) have exactly
/// diffusers' parameters: counts and tensor names from a placeholder build (no weights
/// allocated) against diffusers on the meta device (tools/golden/count_flux_params.py).
#[test]
fn real_flux_configs_have_diffusers_parameter_counts() {
    use mapo::models::flux::FluxTransformerConfig;
    use mapo::models::weights::Weights;
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("flux_param_counts.json")).unwrap()).unwrap();
    for name in ["flux1_dev", "flux1_schnell"] {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("assets/flux/{name}_transformer.json"));
        let config: FluxTransformerConfig = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let w = Weights::shapes_only(&device());
        drop(FluxTransformer2DModel::load(&config, &w).unwrap());
        let requested = w.requested();
        let params: usize = requested.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        eprintln!("{name}: {params} parameters in {} tensors", requested.len());
        assert_eq!(params as u64, want[name]["params"].as_u64().unwrap(), "{name}");
        assert_eq!(requested.len() as u64, want[name]["tensors"].as_u64().unwrap(), "{name}");
    }
}
