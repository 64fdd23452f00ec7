//! The built-in model's pixel scorer (`toy::score`) as a `Scorer`: 8-bit PNGs read back
//! to [-1, 1] floats, then the same reading the experiment's tables use.

use anyhow::{Result, ensure};

use super::resize::Rgb8;
use super::scorer::Scorer;
use crate::toy::score::ToyScorer;

/// An 8-bit image as [3, size, size] in [-1, 1] (channel-major), as `read` takes it.
fn unit_pixels(image: &Rgb8) -> Result<Vec<f32>> {
    ensure!(
        image.width == image.height && image.data.len() == 3 * image.width * image.height,
        "the toy scorer reads square RGB images; this one is {}×{}",
        image.width,
        image.height
    );
    let n = image.width * image.height;
    let mut out = vec![0.0; 3 * n];
    for (i, px) in image.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + i] = px[c] as f32 / 255.0 * 2.0 - 1.0;
        }
    }
    Ok(out)
}

impl Scorer for ToyScorer {
    fn name(&self) -> &'static str {
        ToyScorer::name(self)
    }

    fn needs_text(&self) -> bool {
        ToyScorer::needs_text(self)
    }

    fn score(&self, images: &[Rgb8], prompts: &[String]) -> Result<Vec<f64>> {
        let pixels: Vec<Vec<f32>> = images.iter().map(unit_pixels).collect::<Result<_>>()?;
        let size = images.first().map_or(0, |i| i.width);
        ensure!(images.iter().all(|i| i.width == size), "the toy scorer reads images of one size");
        self.score_pixels(&pixels, size, prompts)
    }
}
