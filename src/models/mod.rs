//! The SDXL models as Burn modules that load diffusers folders.

pub mod attention;
pub mod clip;
pub mod config;
pub mod denoiser;
pub mod flux;
pub mod folder;
pub mod inputs;
pub mod io;
pub mod lora;
pub mod named;
pub mod nn;
pub mod pth;
pub mod resnet;
pub mod rope;
pub mod sampling;
pub mod sd3;
pub mod single_file;
pub mod t5;
pub mod tape;
pub mod unet;
pub mod vae;
pub mod weights;
