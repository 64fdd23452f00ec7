//! Learning-rate schedules with the semantics of diffusers' `get_scheduler`: the
//! multiplier for optimizer step `k` (0-based) of `total`, after `warmup` linear steps.

use std::f64::consts::PI;

pub fn multiplier(schedule: &str, k: usize, total: usize, warmup: usize) -> f64 {
    if schedule != "constant" && k < warmup {
        return k as f64 / warmup.max(1) as f64;
    }
    let progress = (k - warmup.min(k)) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match schedule {
        "linear" => (1.0 - progress).max(0.0),
        "cosine" => (0.5 * (1.0 + (PI * progress).cos())).max(0.0),
        _ => 1.0,
    }
}
