//! Noise schedules, seeded noise and samplers.

pub mod euler;
pub mod noise;
pub mod pipeline;
pub mod schedule;
pub mod validate;
