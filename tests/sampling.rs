//! Euler and DDIM sampling against diffusers (tools/golden/make_sampling.py): timesteps
//! (exact) and sigmas (1e-6 relative) for 1–50 steps and the three spacings, and 6-step
//! guided sampling loops of the tiny UNet from the same initial latents (1e-4 relative to
//! the final latents' max magnitude).

mod common;

use burn::tensor::DType;
use common::*;
use mapo::models::unet::UNet2DConditionModel;
use mapo::sample::ddim::DdimSchedule;
use mapo::sample::euler::EulerSchedule;
use mapo::sample::sampler::Sampler;
use mapo::sample::schedule::NoiseSchedule;
use mapo::sample::validate::{Prompts, sample_latents};

#[test]
fn euler_timesteps_and_sigmas_match_diffusers() {
    let f = open("euler.safetensors");
    let schedule = NoiseSchedule::sdxl();
    for n in [1usize, 6, 20, 25, 30, 50] {
        let e = EulerSchedule::new(&schedule, n, "leading", 1).unwrap();
        let device = device();
        let v = |k: &str| to_vec(f.float::<1>(&format!("steps{n}.{k}"), &device, DType::F32).unwrap());
        assert_eq!(e.timesteps, v("timesteps"), "{n} steps: timesteps");
        for (got, want) in e.sigmas.iter().zip(v("sigmas")) {
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-6), "{n} steps: sigma {got} vs {want}");
        }
        let init = v("init_noise_sigma")[0];
        assert!((e.init_noise_sigma - init).abs() <= 1e-6 * init, "{n} steps: init sigma");
    }
}

/// The conditioning the sampling fixtures were made with (zero negative embeddings).
fn fixture_prompts(f: &mapo::models::io::SafeTensorFiles, device: &burn::tensor::Device) -> Prompts {
    Prompts {
        context: f.float::<3>("sample.encoder_hidden_states", device, DType::F32).unwrap(),
        text_embeds: f.float::<2>("sample.text_embeds", device, DType::F32).unwrap(),
        time_ids: Some(f.float::<2>("sample.time_ids", device, DType::F32).unwrap()),
        negative: None,
        embedded_guidance: None,
    }
}

#[test]
fn guided_euler_sampling_matches_diffusers() {
    let device = device();
    let f = open("euler.safetensors");
    let (unet, _) = UNet2DConditionModel::from_dir(&fixtures().join("tiny-sdxl/unet"), &device, DType::F32).unwrap();
    let prompts = fixture_prompts(&f, &device);
    let euler = EulerSchedule::new(&NoiseSchedule::sdxl(), 6, "leading", 1).unwrap();
    let noise = f.float::<4>("sample.noise", &device, DType::F32).unwrap();
    let got = sample_latents(&unet, &euler, &prompts, noise, 5.0, &mut |_| {});
    assert_close("euler 6 steps, guidance 5", got, f.float::<4>("sample.latents", &device, DType::F32).unwrap(), 1e-4);
}

#[test]
fn spacings_and_ddim_timesteps_match_diffusers() {
    let f = open("euler.safetensors");
    let device = device();
    let schedule = NoiseSchedule::sdxl();
    for spacing in ["leading", "trailing", "linspace"] {
        for n in [1usize, 6, 20, 50] {
            let v = |k: &str| to_vec(f.float::<1>(k, &device, DType::F32).unwrap());
            let e = EulerSchedule::new(&schedule, n, spacing, 1).unwrap();
            assert_eq!(e.timesteps, v(&format!("euler_{spacing}{n}.timesteps")), "euler {spacing} {n}");
            for (got, want) in e.sigmas.iter().zip(v(&format!("euler_{spacing}{n}.sigmas"))) {
                assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-6), "euler {spacing} {n}: {got} vs {want}");
            }
            let d = DdimSchedule::new(&schedule, n, spacing, 1, true, Some(1.0)).unwrap();
            assert_eq!(d.timesteps(), v(&format!("ddim_{spacing}{n}.timesteps")).as_slice(), "ddim {spacing} {n}");
        }
    }
}

#[test]
fn guided_ddim_sampling_matches_diffusers() {
    let device = device();
    let f = open("euler.safetensors");
    let (unet, _) = UNet2DConditionModel::from_dir(&fixtures().join("tiny-sdxl/unet"), &device, DType::F32).unwrap();
    let prompts = fixture_prompts(&f, &device);
    // DDIMScheduler.from_config(Euler's config): set_alpha_to_one and clip_sample default true.
    let ddim = DdimSchedule::new(&NoiseSchedule::sdxl(), 6, "leading", 1, true, Some(1.0)).unwrap();
    let noise = f.float::<4>("sample.noise", &device, DType::F32).unwrap();
    let got = sample_latents(&unet, &ddim, &prompts, noise.clone(), 5.0, &mut |_| {});
    assert_close("ddim 6 steps, guidance 5", got, f.float::<4>("ddim.latents", &device, DType::F32).unwrap(), 1e-4);
    // SDXL's scheduler file: no x₀ clipping, last step onto ᾱ₀.
    let ddim = DdimSchedule::new(&NoiseSchedule::sdxl(), 6, "leading", 1, false, None).unwrap();
    let got = sample_latents(&unet, &ddim, &prompts, noise, 5.0, &mut |_| {});
    let want = f.float::<4>("ddim_sdxl.latents", &device, DType::F32).unwrap();
    assert_close("ddim (SDXL flags) 6 steps", got, want, 1e-4);
}

/// Euler with "linspace" spacing passes fractional timesteps (e.g. 799.2) to the UNet.
#[test]
fn fractional_timesteps_reach_the_unet_unrounded() {
    let device = device();
    let f = open("euler.safetensors");
    let (unet, _) = UNet2DConditionModel::from_dir(&fixtures().join("tiny-sdxl/unet"), &device, DType::F32).unwrap();
    let euler = EulerSchedule::new(&NoiseSchedule::sdxl(), 6, "linspace", 1).unwrap();
    assert!(euler.timesteps.iter().any(|t| t.fract() != 0.0));
    let noise = f.float::<4>("sample.noise", &device, DType::F32).unwrap();
    let got = sample_latents(&unet, &euler, &fixture_prompts(&f, &device), noise, 5.0, &mut |_| {});
    let want = f.float::<4>("euler_linspace.latents", &device, DType::F32).unwrap();
    assert_close("euler linspace 6 steps", got, want, 1e-4);
}
