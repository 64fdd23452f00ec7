//! Noise schedules, seeded noise and samplers.

pub mod ddim;
pub mod euler;
pub mod flow_euler;
pub mod flux;
pub mod noise;
pub mod pipeline;
pub mod sampler;
pub mod schedule;
pub mod sd3;
pub mod sde;
pub mod validate;
