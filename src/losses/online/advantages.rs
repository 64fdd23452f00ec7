//! GRPO's advantages (flow_grpo's `PerPromptStatTracker` with `global_std`): each reward
//! minus the mean of its group (the K samples of one prompt), over the standard deviation
//! of all the iteration's rewards (population, ddof 0) + 1e-4, clipped to ±`adv_clip_max`.
//! In f64, as numpy computes it.

use anyhow::{Result, ensure};

/// flow_grpo's `adv_clip_max`.
pub const CLIP: f64 = 5.0;

/// Advantages of `rewards` (one per sample) grouped by `group` (one id per sample).
pub fn advantages(rewards: &[f64], group: &[i64], clip: f64) -> Result<Vec<f64>> {
    ensure!(rewards.len() == group.len(), "{} rewards but {} group ids", rewards.len(), group.len());
    ensure!(!rewards.is_empty(), "no rewards");
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        anyhow::bail!("reward {i} is {} (drop non-finite rewards before computing advantages)", rewards[i]);
    }
    let n = rewards.len() as f64;
    let mean_all = rewards.iter().sum::<f64>() / n;
    let std = (rewards.iter().map(|r| (r - mean_all).powi(2)).sum::<f64>() / n).sqrt() + 1e-4;
    let mut sums: std::collections::BTreeMap<i64, (f64, usize)> = Default::default();
    for (r, g) in rewards.iter().zip(group) {
        let e = sums.entry(*g).or_default();
        e.0 += r;
        e.1 += 1;
    }
    Ok(rewards
        .iter()
        .zip(group)
        .map(|(r, g)| {
            let (sum, count) = sums[g];
            ((r - sum / count as f64) / std).clamp(-clip, clip)
        })
        .collect())
}
