//! Seeded Gaussian noise that depends only on the seed (the same on every backend).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` standard-normal values (Box–Muller over a ChaCha8 stream seeded by `seed`).
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| standard_normal(&mut rng)).collect()
}

pub fn standard_normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}
