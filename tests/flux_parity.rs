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
