//! Rollouts for the online methods (`sample::rollout`) on the tiny SD3.5 pipeline, 4 steps of
//! its FlowMatchEuler schedule with classifier-free guidance: at noise_level 0 the rollout is
//! the ODE sampler (the same final latents as `sample_latents`, 1e-6); with noise it is
//! seeded (the same seed, the same trajectory; another seed, another one), and scoring its
//! own transitions with the same model gives back the log-probabilities it kept (GRPO's first
//! ratio is 1; 1e-5 relative).

mod common;

use burn::tensor::DType;
use common::*;
use mapo::sample::rollout::{Stepper, rollout, score_step};
use mapo::sample::sd3::Sd3Pipeline;
use mapo::sample::validate::{Prompts, initial_noise, sample_latents};

fn setup() -> (Sd3Pipeline, Prompts, Vec<f32>) {
    let mut pipe = Sd3Pipeline::load(&fixtures().join("tiny-sd35"), None, true, &device(), DType::F32).unwrap();
    pipe.prompts.max_sequence_length = 16;
    let (context, text_embeds) = pipe.prompts.encode("a photo of a cat").unwrap();
    let negative = Some(pipe.prompts.encode("").unwrap());
    let prompts = Prompts { context, text_embeds, time_ids: None, negative, embedded_guidance: None };
    let sigmas = pipe.scheduler.sampler(4).unwrap().sigmas;
    (pipe, prompts, sigmas)
}

#[test]
fn an_ode_rollout_is_the_sampler() {
    let (pipe, prompts, sigmas) = setup();
    let noise = initial_noise(7, 1, [16, 8, 6], &device());
    let sampler = pipe.scheduler.sampler(4).unwrap();
    let want = sample_latents(&pipe.transformer, &sampler, &prompts, noise.clone(), 4.5, &mut |_| {});
    let ode = Stepper::Flow { sigmas, noise_level: 0.0 };
    let got = rollout(&pipe.transformer, &prompts, noise, &ode, 4.5, 0);
    assert_eq!(got.states.len(), 5);
    assert_close("ODE rollout", got.sample().clone(), want, 1e-6);
}

#[test]
fn sde_rollouts_are_seeded_and_score_their_own_transitions() {
    let (pipe, prompts, sigmas) = setup();
    let noise = initial_noise(7, 1, [16, 8, 6], &device());
    let sde = Stepper::Flow { sigmas: sigmas.clone(), noise_level: 0.7 };
    let a = rollout(&pipe.transformer, &prompts, noise.clone(), &sde, 4.5, 11);
    let b = rollout(&pipe.transformer, &prompts, noise.clone(), &sde, 4.5, 11);
    let c = rollout(&pipe.transformer, &prompts, noise, &sde, 4.5, 12);
    assert_eq!(to_vec(a.sample().clone()), to_vec(b.sample().clone()), "same seed, same trajectory");
    assert!(rel_err(&to_vec(a.sample().clone()), &to_vec(c.sample().clone())) > 1e-3, "another seed, another one");
    for step in 0..sigmas.len() - 1 {
        let scored = score_step(&pipe.transformer, &prompts, &a, step, 4.5);
        let (got, kept) = (to_vec(scored.log_prob), to_vec(a.log_probs[step].clone()));
        eprintln!("step {step}: log_prob {got:?} (kept {kept:?})");
        assert!(rel_err(&got, &kept) <= 1e-5, "step {step}: {got:?} vs {kept:?}");
    }
}

/// DDPO's rollout of an ε-model (the tiny SDXL UNet, 4 DDIM steps, CFG 3): at η = 0 it is the
/// DDIM sampler (1e-5: the sampler's coefficients are f64 scalars, the step's f32 rows); at
/// η = 1 re-scoring its transitions gives back the log-probabilities it kept (1e-5 relative).
#[test]
fn ddim_rollouts_are_the_sampler_at_eta_0_and_score_their_own_transitions() {
    use mapo::models::unet::UNet2DConditionModel;
    use mapo::sample::ddim::DdimSchedule;
    use mapo::sample::schedule::NoiseSchedule;
    let (unet, _) = UNet2DConditionModel::from_dir(&fixtures().join("tiny-sdxl/unet"), &device(), DType::F32).unwrap();
    let t = |seed: u64, shape: [usize; 3]| initial_noise(seed, 1, shape, &device());
    let prompts = Prompts {
        context: t(1, [1, 77, 48]).reshape([1, 77, 48]),
        text_embeds: t(2, [1, 1, 32]).reshape([1, 32]),
        time_ids: Some(burn::tensor::Tensor::from_data([[16.0f32, 16.0, 0.0, 0.0, 16.0, 16.0]], &device())),
        negative: None,
        embedded_guidance: None,
    };
    let schedule = NoiseSchedule::sdxl();
    let ddim = DdimSchedule::new(&schedule, 4, "leading", 1, false, None).unwrap();
    let stepper = |eta: f64| Stepper::Ddim {
        timesteps: ddim.timesteps.iter().map(|&t| t as i64).collect(),
        alphas_cumprod: schedule.alphas_cumprod.iter().map(|&a| a as f64).collect(),
        eta,
    };
    let noise = initial_noise(7, 1, [4, 16, 16], &device());
    let want = sample_latents(&unet, &ddim, &prompts, noise.clone(), 3.0, &mut |_| {});
    let got = rollout(&unet, &prompts, noise.clone(), &stepper(0.0), 3.0, 0);
    assert_close("η = 0 DDIM rollout", got.sample().clone(), want, 1e-5);
    let a = rollout(&unet, &prompts, noise, &stepper(1.0), 3.0, 5);
    for step in 0..4 {
        let scored = score_step(&unet, &prompts, &a, step, 3.0);
        let (got, kept) = (to_vec(scored.log_prob), to_vec(a.log_probs[step].clone()));
        assert!(rel_err(&got, &kept) <= 1e-5, "step {step}: {got:?} vs {kept:?}");
    }
}
