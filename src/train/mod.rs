//! Training: optimizers, global gradient clipping, and the preference step.

pub mod clip;
pub mod optim;
pub mod step;
