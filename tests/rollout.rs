//! Rollouts for the online methods (`sample::rollout`) on the tiny SD3.5 pipeline, 4 steps of
//! its FlowMatchEuler schedule with classifier-free guidance: at noise_level 0 the rollout is
//! the ODE sampler (the same final latents as `sample_latents`, 1e-6); with noise it is
//! seeded (the same seed, the same trajectory; another seed, another one), and scoring its
//! own transitions with the same model gives back the log-probabilities it kept (GRPO's first
//! ratio is 1; 1e-5 relative).

mod common;

use burn::tensor::DType;
use common::*;
use mapo::sample::rollout::{rollout, score_step};
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
    let got = rollout(&pipe.transformer, &prompts, noise, &sigmas, 4.5, 0.0, 0);
    assert_eq!(got.states.len(), 5);
    assert_close("ODE rollout", got.sample().clone(), want, 1e-6);
}

#[test]
fn sde_rollouts_are_seeded_and_score_their_own_transitions() {
    let (pipe, prompts, sigmas) = setup();
    let noise = initial_noise(7, 1, [16, 8, 6], &device());
    let a = rollout(&pipe.transformer, &prompts, noise.clone(), &sigmas, 4.5, 0.7, 11);
    let b = rollout(&pipe.transformer, &prompts, noise.clone(), &sigmas, 4.5, 0.7, 11);
    let c = rollout(&pipe.transformer, &prompts, noise, &sigmas, 4.5, 0.7, 12);
    assert_eq!(to_vec(a.sample().clone()), to_vec(b.sample().clone()), "same seed, same trajectory");
    assert!(rel_err(&to_vec(a.sample().clone()), &to_vec(c.sample().clone())) > 1e-3, "another seed, another one");
    for step in 0..sigmas.len() - 1 {
        let scored = score_step(&pipe.transformer, &prompts, &a, step, 4.5, 0.7);
        let (got, kept) = (to_vec(scored.log_prob), to_vec(a.log_probs[step].clone()));
        eprintln!("step {step}: log_prob {got:?} (kept {kept:?})");
        assert!(rel_err(&got, &kept) <= 1e-5, "step {step}: {got:?} vs {kept:?}");
    }
}
