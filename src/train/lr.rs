//! Learning-rate schedules with the semantics of diffusers' `get_scheduler`: the
//! multiplier for optimizer step `k` (0-based) of `total`, after `warmup` linear steps.

use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

/// `lr_schedule` (diffusers' `lr_scheduler` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    Constant,
    ConstantWithWarmup,
    Linear,
    Cosine,
}

pub fn multiplier(schedule: LrSchedule, k: usize, total: usize, warmup: usize) -> f64 {
    if schedule != LrSchedule::Constant && k < warmup {
        return k as f64 / warmup.max(1) as f64;
    }
    let progress = (k - warmup.min(k)) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match schedule {
        LrSchedule::Linear => (1.0 - progress).max(0.0),
        LrSchedule::Cosine => (0.5 * (1.0 + (PI * progress).cos())).max(0.0),
        LrSchedule::Constant | LrSchedule::ConstantWithWarmup => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::{LrSchedule, multiplier};

    /// Values of transformers' get_{constant,linear,cosine}_schedule_with_warmup
    /// (10 steps, 2 warm-up) at steps 0, 1, 2, 6, 9.
    #[test]
    fn schedules_match_transformers() {
        let at = |s: LrSchedule| [0, 1, 2, 6, 9].map(|k| multiplier(s, k, 10, 2));
        assert_eq!(at(LrSchedule::Constant), [1.0; 5]);
        assert_eq!(at(LrSchedule::ConstantWithWarmup), [0.0, 0.5, 1.0, 1.0, 1.0]);
        assert_eq!(at(LrSchedule::Linear), [0.0, 0.5, 1.0, 0.5, 0.125]);
        let cosine = at(LrSchedule::Cosine);
        for (got, want) in cosine.iter().zip([0.0, 0.5, 1.0, 0.5, 0.038060233744356624]) {
            assert!((got - want).abs() < 1e-12, "{cosine:?}");
        }
    }
}
