//! Euler sampling against diffusers (tools/golden/make_sampling.py): the scheduler's
//! timesteps and sigmas for 1–50 steps (exact / 1e-6 relative), and a 6-step guided
//! sampling loop of the tiny UNet from the same initial latents (1e-4 relative to the
//! final latents' max magnitude).

mod common;

use burn::tensor::DType;
use common::*;
use mapo::models::unet::UNet2DConditionModel;
use mapo::sample::euler::EulerSchedule;
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

#[test]
fn guided_euler_sampling_matches_diffusers() {
    let device = device();
    let f = open("euler.safetensors");
    let (unet, _) = UNet2DConditionModel::from_dir(&fixtures().join("tiny-sdxl/unet"), &device, DType::F32).unwrap();
    let prompts = Prompts {
        context: f.float::<3>("sample.encoder_hidden_states", &device, DType::F32).unwrap(),
        text_embeds: f.float::<2>("sample.text_embeds", &device, DType::F32).unwrap(),
        time_ids: f.float::<2>("sample.time_ids", &device, DType::F32).unwrap(),
        negative: None,
    };
    let euler = EulerSchedule::new(&NoiseSchedule::sdxl(), 6, "leading", 1).unwrap();
    let noise = f.float::<4>("sample.noise", &device, DType::F32).unwrap();
    let got = sample_latents(&unet, &euler, &prompts, noise, 5.0, &mut |_| {});
    assert_close("euler 6 steps, guidance 5", got, f.float::<4>("sample.latents", &device, DType::F32).unwrap(), 1e-4);
}
