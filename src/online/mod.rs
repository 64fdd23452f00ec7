//! Online training (docs/design.md §4c): the run samples its own images in groups per
//! prompt, scores them with rewards, and trains on them: Flow-GRPO (`grpo`), DiffusionNFT
//! (`nft`), or any pair method on each group's best and worst image (online pairs). It sits
//! above `train` (whose optimizer, update, checkpoints and output folder it uses) and `eval`
//! (whose reward models score a diffusers model's images).
//!
//! - `task`: prompts, their conditioning, and the rewards (the built-in model's; `suite` for
//!   a diffusers model with reward models);
//! - `rollouts`: one iteration's prompts, trajectories and rewards;
//! - `learner`: the policy, its optimizer and the gradient accumulation of a batch;
//! - `grpo`, `nft`, `pairs`: each method's pass over an iteration's samples;
//! - `run`: the loop, its metrics, checkpoints and resume.

pub mod grpo;
pub mod learner;
pub mod nft;
pub mod pairs;
pub mod rollouts;
pub mod run;
pub mod suite;
pub mod task;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A generator for one use of randomness in an online run, from the run's seed and where it
/// is used (iteration, purpose, index): a resumed run redraws exactly what an uninterrupted
/// one drew, with no generator state to save.
pub fn rng(seed: u64, parts: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(mix(seed, parts))
}

/// `seed` mixed with `parts` (splitmix64 steps): a seed for `sample::noise::gaussian`.
pub fn mix(seed: u64, parts: &[u64]) -> u64 {
    let mut h = seed ^ 0x6F6E_6C69_6E65_0000; // "online"
    for &p in parts {
        h = h.wrapping_add(p.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 31;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 29;
    }
    h
}

/// What randomness is for (the second part of [`rng`]'s key).
pub mod purpose {
    pub const PROMPTS: u64 = 1;
    pub const NOISE: u64 = 2;
    pub const STEP_NOISE: u64 = 3;
    pub const SHUFFLE: u64 = 4;
    pub const TRAIN_NOISE: u64 = 5;
}
