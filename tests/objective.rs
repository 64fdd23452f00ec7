//! The two training objectives: ε-prediction draws exactly what the trainer drew before the
//! objective was its own piece (so no number changed), flow matching forms its input and
//! target as diffusers' SD3 training does, and its sampler gives diffusers' sigmas.

mod common;

use burn::tensor::{Tensor, TensorData};
use mapo::objective::{FlowConfig, Objective, ObjectiveName};
use mapo::sample::flow_euler::FlowMatchEuler;
use mapo::sample::sampler::Sampler;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[test]
fn epsilon_draws_the_timesteps_the_trainer_always_drew() {
    let objective = Objective::sdxl();
    let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(7), ChaCha8Rng::seed_from_u64(7));
    for _ in 0..1000 {
        assert_eq!(objective.draw_timestep(&mut a), b.random_range(0..1000i64));
    }
    // And the generator is left where it was, so the noise drawn next is unchanged too.
    assert_eq!(a.random::<u64>(), b.random::<u64>());
}

/// diffusers 0.42.1 `FlowMatchEulerDiscreteScheduler(shift=3.0).set_timesteps(4)`:
/// timesteps 1000, 857.692, 602.151, 8.9286 (docs/design.md §2b, read off diffusers).
#[test]
fn flow_match_euler_gives_diffusers_sd3_timesteps() {
    let s = FlowMatchEuler::new(4, 3.0, 1000).unwrap();
    let want = [1000.0f32, 857.6923, 602.1506, 8.928572];
    for (got, want) in s.timesteps().iter().zip(want) {
        assert!((got - want).abs() <= 1e-3, "timesteps {:?} vs {want:?}", s.timesteps());
    }
    assert_eq!(s.sigmas.len(), 5);
    assert_eq!(*s.sigmas.last().unwrap(), 0.0);
    assert_eq!(s.init_noise_sigma(), 1.0);
    // One Euler step moves by (σ_{i+1} − σ_i)·v.
    let device = common::device();
    let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32; 4], [1, 1, 2, 2]), &device);
    let v = Tensor::<4>::from_data(TensorData::new(vec![2.0f32; 4], [1, 1, 2, 2]), &device);
    let next = common::to_vec(s.step(0, x, v));
    let want = 1.0 + 2.0 * (s.sigmas[1] - s.sigmas[0]);
    assert!(next.iter().all(|g| (g - want).abs() < 1e-6), "{next:?} vs {want}");
    assert!(FlowMatchEuler::new(0, 3.0, 1000).is_err());
}

#[test]
fn flow_matching_interpolates_and_targets_the_velocity() {
    let device = common::device();
    let objective =
        Objective::new(ObjectiveName::Flow, Some(&FlowConfig { shift: 1.0, ..Default::default() })).unwrap();
    let Objective::Flow(flow) = &objective else { panic!("a flow objective") };
    // shift 1: the grid is t/N for t = N..1, and the model is told σ·N.
    assert_eq!(flow.sigma(0), 1.0);
    assert_eq!(flow.sigma(999), 0.001);
    let t = common::to_vec(objective.model_timesteps(&[0, 750], &device));
    assert_eq!(t, vec![1000.0, 250.0]);

    let x0 = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0, -1.0, 0.5], [2, 1, 1, 2]), &device);
    let eps = Tensor::<4>::from_data(TensorData::new(vec![0.5f32, -0.5, 2.0, 1.0], [2, 1, 1, 2]), &device);
    let noisy = common::to_vec(objective.noisy(x0.clone(), eps.clone(), &[0, 750]));
    // Row 0 at σ = 1 is the noise; row 1 at σ = 0.25 is 0.75·x0 + 0.25·ε.
    let want = [0.5f32, -0.5, -0.75 + 0.25 * 2.0, 0.75 * 0.5 + 0.25 * 1.0];
    for (g, w) in noisy.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{noisy:?} vs {want:?}");
    }
    assert_eq!(common::to_vec(objective.target(x0, eps)), vec![-0.5, -2.5, 3.0, 0.5]);
}

#[test]
fn flow_draws_stay_in_the_grid_and_follow_the_logit_normal() {
    let objective = Objective::new(ObjectiveName::Flow, None).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let draws: Vec<i64> = (0..20_000).map(|_| objective.draw_timestep(&mut rng)).collect();
    assert!(draws.iter().all(|&i| (0..1000).contains(&i)));
    // u = sigmoid(N(0, 1)) is symmetric around 0.5: the median index is near 500, and the
    // middle half of the mass lies within sigmoid(±0.674)·1000 ≈ [338, 662].
    let mut sorted = draws.clone();
    sorted.sort();
    let q = |p: f64| sorted[(p * sorted.len() as f64) as usize];
    assert!((480..=520).contains(&q(0.5)), "median {}", q(0.5));
    assert!((320..=356).contains(&q(0.25)) && (644..=680).contains(&q(0.75)), "quartiles {} {}", q(0.25), q(0.75));
}

#[test]
fn bad_flow_settings_are_refused_by_name() {
    for (cfg, needle) in [
        (FlowConfig { shift: 0.0, ..Default::default() }, "flow.shift"),
        (FlowConfig { num_train_timesteps: 1, ..Default::default() }, "flow.num_train_timesteps"),
        (FlowConfig { logit_std: -1.0, ..Default::default() }, "flow.logit_std"),
    ] {
        let err = Objective::new(ObjectiveName::Flow, Some(&cfg)).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}
