//! Noise schedules and (later) samplers.

pub mod schedule;
