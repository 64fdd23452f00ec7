//! VAE parity with diffusers (weights stored sharded in bf16; fixtures from
//! tools/golden/make_unet_vae.py). Tolerance: 1e-4 relative to the output's max magnitude.

mod common;

use burn::tensor::DType;
use common::*;
use mapo::models::vae::AutoencoderKL;

#[test]
fn vae_encode_decode_match_diffusers() {
    let device = device();
    let (vae, config) = AutoencoderKL::from_dir(&fixtures().join("tiny-sdxl/vae"), &device, DType::F32).unwrap();
    assert_eq!(config.scaling_factor, 0.13025);
    let cases = open("vae_cases.safetensors");
    for case in ["case0", "case1"] {
        let f = |n: &str| cases.float::<4>(&format!("{case}.{n}"), &device, DType::F32).unwrap();
        let (mean, logvar) = vae.encode(f("sample"));
        assert_close(&format!("vae {case} mean"), mean, f("mean"), 1e-4);
        assert_close(&format!("vae {case} logvar"), logvar, f("logvar"), 1e-4);
        assert_close(&format!("vae {case} decode"), vae.decode(f("latents")), f("decoded"), 1e-4);
    }
}
