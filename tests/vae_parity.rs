//! VAE parity with diffusers (weights stored sharded in bf16; fixtures from
//! tools/golden/make_unet_vae.py), and SD3's 16-channel layout without quant convs
//! (tools/golden/make_sd3_vae.py). Tolerance: 1e-4 relative to the output's max magnitude.

mod common;

use burn::tensor::DType;
use common::*;
use mapo::models::vae::AutoencoderKL;

#[test]
fn vae_encode_decode_match_diffusers() {
    let device = device();
    let (vae, config) = AutoencoderKL::from_dir(&fixtures().join("tiny-sdxl/vae"), &device, DType::F32).unwrap();
    assert_eq!(config.scaling_factor, 0.13025);
    check_cases(&vae, "vae_cases.safetensors");
}

/// SD3 / SD3.5 / FLUX: 16 latent channels, no quant convs, latents shifted and scaled.
#[test]
fn sd3_vae_matches_diffusers() {
    let device = device();
    let (vae, config) = AutoencoderKL::from_dir(&fixtures().join("tiny-sd35/vae"), &device, DType::F32).unwrap();
    assert_eq!((config.latent_channels, config.shift_factor, config.use_quant_conv), (16, Some(0.0609), false));
    assert!(vae.quant_conv.is_none() && vae.post_quant_conv.is_none());
    check_cases(&vae, "sd3_vae_cases.safetensors");
}

fn check_cases(vae: &AutoencoderKL, file: &str) {
    let device = device();
    let cases = open(file);
    for case in ["case0", "case1"] {
        let f = |n: &str| cases.float::<4>(&format!("{case}.{n}"), &device, DType::F32).unwrap();
        let (mean, logvar) = vae.encode(f("sample"));
        assert_close(&format!("vae {case} mean"), mean, f("mean"), 1e-4);
        assert_close(&format!("vae {case} logvar"), logvar, f("logvar"), 1e-4);
        assert_close(&format!("vae {case} decode"), vae.decode(f("latents")), f("decoded"), 1e-4);
    }
}
