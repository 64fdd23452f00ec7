//! What a comparison of model variants reports: the mean score with a 95% bootstrap
//! interval, and the win rate against a baseline paired by prompt and seed (a tie counts
//! half), with its own bootstrap interval. Resampling is seeded, so a report is reproducible.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Resamples per interval.
pub const RESAMPLES: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub value: f64,
    /// The 2.5% and 97.5% percentiles of the bootstrap distribution.
    pub low: f64,
    pub high: f64,
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len().max(1) as f64
}

/// Percentile bootstrap of `stat` over `n` items (resampled with replacement).
fn bootstrap(n: usize, seed: u64, stat: impl Fn(&[usize]) -> f64) -> (f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
            stat(&idx)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((q * (RESAMPLES - 1) as f64).round() as usize).min(RESAMPLES - 1)];
    (at(0.025), at(0.975))
}

/// The mean of `scores` and its interval.
pub fn mean_ci(scores: &[f64], seed: u64) -> Estimate {
    let (low, high) = bootstrap(scores.len(), seed, |idx| mean(&idx.iter().map(|&i| scores[i]).collect::<Vec<_>>()));
    Estimate { value: mean(scores), low, high }
}

/// The share of items where `ours` beats `base` (same index = same prompt and seed).
pub fn win_rate(ours: &[f64], base: &[f64], seed: u64) -> Estimate {
    assert_eq!(ours.len(), base.len(), "paired scores");
    let wins: Vec<f64> = ours
        .iter()
        .zip(base)
        .map(|(a, b)| {
            if a > b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            }
        })
        .collect();
    let (low, high) = bootstrap(wins.len(), seed, |idx| mean(&idx.iter().map(|&i| wins[i]).collect::<Vec<_>>()));
    Estimate { value: mean(&wins), low, high }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_bracket_the_estimate_and_shrink_with_data() {
        let constant = mean_ci(&[2.0; 10], 1);
        assert_eq!((constant.value, constant.low, constant.high), (2.0, 2.0, 2.0));
        let noisy: Vec<f64> = (0..40).map(|i| ((i * 37) % 11) as f64).collect();
        let a = mean_ci(&noisy[..10], 1);
        let b = mean_ci(&noisy, 1);
        assert!(a.low <= a.value && a.value <= a.high);
        assert!(b.high - b.low < a.high - a.low, "{a:?} {b:?}");
        assert_eq!(mean_ci(&noisy, 1), mean_ci(&noisy, 1), "seeded");
    }

    #[test]
    fn win_rate_counts_ties_half() {
        assert_eq!(win_rate(&[2.0, 2.0, 0.0], &[1.0, 2.0, 1.0], 0).value, 0.5);
        let all = win_rate(&[3.0; 5], &[1.0; 5], 0);
        assert_eq!((all.value, all.low, all.high), (1.0, 1.0, 1.0));
    }
}
