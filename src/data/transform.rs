//! Image transforms of a preference pair, as the SDXL preference-training scripts do them:
//! decode, resize the shorter side to the resolution (bilinear), crop a square (centre or
//! random; its offsets go into `time_ids` with the original size), optionally flip both
//! images of the pair identically, scale to [-1, 1]; drop the caption with probability p.

use anyhow::{Context, Result};
use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::parquet::Pair;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformConfig {
    pub resolution: usize,
    pub random_crop: bool,
    /// Probability of flipping a pair horizontally.
    pub flip: f64,
    /// Probability of replacing the caption with the empty prompt.
    pub caption_dropout: f64,
}

impl Default for TransformConfig {
    fn default() -> Self {
        Self { resolution: 1024, random_crop: false, flip: 0.0, caption_dropout: 0.0 }
    }
}

impl TransformConfig {
    /// Ranges checked when the options are read, before any image is decoded.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.resolution > 0 && self.resolution.is_multiple_of(8) && self.resolution <= 8192,
            "data_transform.resolution {} must be a positive multiple of 8, at most 8192 (the VAE downsamples by 8)",
            self.resolution
        );
        for (name, p) in [("flip", self.flip), ("caption_dropout", self.caption_dropout)] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&p),
                "data_transform.{name} {p} is a probability: it must be in [0, 1]"
            );
        }
        Ok(())
    }
}

/// A pair ready for the encoders.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// [3, R, R] in [-1, 1], channel-major (unpaired: the row's image).
    pub chosen: Vec<f32>,
    /// Empty for an unpaired row.
    pub rejected: Vec<f32>,
    /// Unpaired rows: whether the image is desirable.
    pub label: Option<bool>,
    /// `None`: dropped to the empty prompt.
    pub caption: Option<String>,
    /// SDXL's `[orig_h, orig_w, crop_top, crop_left, R, R]` (of the chosen image).
    pub time_ids: [f32; 6],
    pub flipped: bool,
    /// Where the pair came from.
    pub file: std::path::PathBuf,
    pub row: usize,
}

/// Decodes and transforms `pair`. The random choices come from `(seed, index)` only, so
/// a pair gets the same crop and flip whichever worker prepares it.
pub fn prepare(pair: &Pair, config: &TransformConfig, seed: u64, index: u64) -> Result<Prepared> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let decode = |bytes: &[u8], which: &str| {
        decode_rgb(bytes)
            .with_context(|| format!("{} row {}: {which} image does not decode", pair.file.display(), pair.row))
    };
    let unpaired = pair.label.is_some();
    let chosen = decode(&pair.chosen, if unpaired { "the" } else { "chosen" })?;
    let rejected = if unpaired { None } else { Some(decode(&pair.rejected, "rejected")?) };
    let r = config.resolution;
    let (orig_w, orig_h) = chosen.dimensions();
    let at = |which: &str| format!("{} row {}: the {which} image", pair.file.display(), pair.row);
    let chosen = resize_shorter(chosen, r).with_context(|| at(if unpaired { "row's" } else { "chosen" }))?;
    let rejected = rejected.map(|i| resize_shorter(i, r).with_context(|| at("rejected"))).transpose()?;
    let (w, h) = chosen.dimensions();
    let (max_top, max_left) = (h as usize - r, w as usize - r);
    let (top, left) = if config.random_crop {
        (rng.random_range(0..=max_top), rng.random_range(0..=max_left))
    } else {
        // torchvision's CenterCrop rounds the offset to the nearest pixel.
        (((max_top as f64) / 2.0).round() as usize, ((max_left as f64) / 2.0).round() as usize)
    };
    let flipped = config.flip > 0.0 && rng.random::<f64>() < config.flip;
    let dropped = config.caption_dropout > 0.0 && rng.random::<f64>() < config.caption_dropout;
    let finish = |img: RgbImage| {
        // Both images share the crop window (clamped if the rejected one is smaller).
        let (w, h) = img.dimensions();
        let (t, l) = (top.min(h as usize - r), left.min(w as usize - r));
        to_chw(&img, t, l, r, flipped)
    };
    Ok(Prepared {
        chosen: finish(chosen),
        rejected: rejected.map(finish).unwrap_or_default(),
        label: pair.label,
        caption: (!dropped).then(|| pair.caption.clone()),
        time_ids: [orig_h as f32, orig_w as f32, top as f32, left as f32, r as f32, r as f32],
        flipped,
        file: pair.file.clone(),
        row: pair.row,
    })
}

/// Decodes an image (PNG, JPEG, WebP) to 8-bit RGB. A JPEG cut short is an error, as in
/// PIL: the decoder would fill the missing part with grey and say nothing.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_is_complete(bytes) {
        anyhow::bail!("a truncated JPEG ({} bytes, no end-of-image marker after its last scan)", bytes.len());
    }
    Ok(image::load_from_memory(bytes)?.into_rgb8())
}

/// Whether an end-of-image marker (FF D9) follows the start of the last scan (FF DA). In a
/// scan's data FF is always followed by 00 or a restart marker, so neither pair occurs there
/// by chance; an EXIF thumbnail's own markers come before the main image's scans.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    match (last(0xDA), last(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

/// The longest side may be at most this many times the shortest. The resize works on the
/// whole image (`image`'s resampler), so its memory grows with the aspect ratio: a 1×10000
/// strip at 1024 would be 31 GB.
pub const MAX_ASPECT: u32 = 16;

fn resize_shorter(img: RgbImage, r: usize) -> Result<RgbImage> {
    let (w, h) = img.dimensions();
    anyhow::ensure!(w > 0 && h > 0, "is empty ({w}×{h})");
    anyhow::ensure!(
        w.max(h) / w.min(h) <= MAX_ASPECT,
        "is {w}×{h}: an aspect ratio above {MAX_ASPECT}:1 is not trained on (resized to a {r} short side it \
         would be {}×{} pixels)",
        (w as u64 * r as u64 / w.min(h) as u64),
        (h as u64 * r as u64 / w.min(h) as u64)
    );
    let scale = r as f64 / w.min(h) as f64;
    // Round the longer side, and never below the resolution.
    let (nw, nh) =
        (((w as f64 * scale).round() as u32).max(r as u32), ((h as f64 * scale).round() as u32).max(r as u32));
    if (nw, nh) == (w, h) {
        return Ok(img);
    }
    Ok(DynamicImage::ImageRgb8(img).resize_exact(nw, nh, FilterType::Triangle).to_rgb8())
}

fn to_chw(img: &RgbImage, top: usize, left: usize, r: usize, flip: bool) -> Vec<f32> {
    let mut out = vec![0.0; 3 * r * r];
    for y in 0..r {
        for x in 0..r {
            let sx = if flip { left + r - 1 - x } else { left + x };
            let p = img.get_pixel(sx as u32, (top + y) as u32);
            for c in 0..3 {
                out[(c * r + y) * r + x] = p[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    out
}
