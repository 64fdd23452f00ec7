//! mapo: preference fine-tuning (SFT, Diffusion-DPO, MaPO) of SDXL-family diffusion models,
//! written on Burn so that one model code path runs on CUDA, wgpu and CPU.

pub mod bench;
pub mod cli;
pub mod data;
pub mod device;
pub mod eval;
pub mod experiment;
pub mod family;
pub mod losses;
pub mod models;
pub mod objective;
pub mod online;
pub mod sample;
pub mod toy;
pub mod train;
pub mod util;
