//! Preference data: Pick-a-Pic-format parquet pairs, image transforms, a background
//! loader, the latent/embedding cache, and the built-in experiment's generated images.

pub mod cache;
pub mod loader;
pub mod parquet;
pub mod stream;
pub mod transform;
