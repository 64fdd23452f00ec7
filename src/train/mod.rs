//! Training: optimizers, global gradient clipping, the preference step, and the loop.

pub mod checkpoint;
pub mod config;
pub mod config_names;
pub mod data;
pub mod drift;
pub mod grad_clip;
pub mod lr;
pub mod online_config;
pub mod optim;
pub mod outdir;
pub mod ranks;
pub mod reference_cache;
pub mod run;
pub mod setup;
pub mod step;
pub mod trainer;
