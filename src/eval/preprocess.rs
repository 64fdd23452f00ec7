//! transformers' CLIP image processor with the PIL backend (`CLIPImageProcessorPil`, what
//! `CLIPImageProcessor` was before transformers 5 made torchvision its default), from a
//! model folder's `preprocessor_config.json`: shortest edge → `size` with PIL's bicubic,
//! centre crop, × `rescale_factor` (in f64, then f32), `(x − mean) / std` in f32.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use super::resize::{Rgb8, Window, crop_at, resize_window};

/// The most pixels an image may have after resizing when nothing crops it (64 M).
const MAX_PIXELS: usize = 1 << 26;

/// Python's `round` (ties to even).
fn round_half_even(x: f64) -> usize {
    let r = x.round();
    let r = if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 { r - x.signum() } else { r };
    r as usize
}

/// `size` / `crop_size` as processors write them: `{"shortest_edge": N}`,
/// `{"height": H, "width": W}`, or a bare number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Shortest { shortest_edge: usize },
    Box { height: usize, width: usize },
    Square(usize),
}

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default = "yes")]
    do_resize: bool,
    size: Option<SizeSpec>,
    #[serde(default = "bicubic")]
    resample: u32,
    #[serde(default = "yes")]
    do_center_crop: bool,
    crop_size: Option<SizeSpec>,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "one_255")]
    rescale_factor: f64,
    #[serde(default = "yes")]
    do_normalize: bool,
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
}

fn yes() -> bool {
    true
}
fn bicubic() -> u32 {
    3
}
fn one_255() -> f64 {
    1.0 / 255.0
}

/// OpenAI CLIP's normalisation (transformers' `OPENAI_CLIP_MEAN` / `_STD`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Whose arithmetic the crop and rescale follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// transformers: crop offsets rounded down, `x · (1/255)` in f64 then f32.
    Transformers,
    /// open_clip's val transform (torchvision): crop offsets `round((n − crop) / 2)` (half
    /// to even, as Python rounds), `ToTensor`'s `x / 255` in f32.
    OpenClip,
}

#[derive(Debug, Clone)]
pub struct ClipImageProcessor {
    pub style: Style,
    /// The shortest edge after resizing (None: no resize).
    pub shortest_edge: Option<usize>,
    /// (height, width) of the centre crop (None: no crop).
    pub crop: Option<(usize, usize)>,
    pub rescale: Option<f64>,
    pub mean_std: Option<([f32; 3], [f32; 3])>,
}

impl ClipImageProcessor {
    /// The processor of `dir/preprocessor_config.json`; transformers' CLIP defaults
    /// (224, bicubic, OpenAI mean/std) for keys it leaves out.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let raw: RawConfig = serde_json::from_str(&text).with_context(|| format!("{}: unsupported", path.display()))?;
        ensure!(raw.resample == 3, "{}: resample {} is not bicubic (3)", path.display(), raw.resample);
        let shortest_edge = match (raw.do_resize, raw.size.unwrap_or(SizeSpec::Shortest { shortest_edge: 224 })) {
            (false, _) => None,
            (true, SizeSpec::Shortest { shortest_edge } | SizeSpec::Square(shortest_edge)) => Some(shortest_edge),
            (true, SizeSpec::Box { .. }) => {
                bail!("{}: size as height/width is not CLIP's shortest-edge resize", path.display())
            }
        };
        let crop = match (raw.do_center_crop, raw.crop_size.unwrap_or(SizeSpec::Square(224))) {
            (false, _) => None,
            (true, SizeSpec::Box { height, width }) => Some((height, width)),
            (true, SizeSpec::Square(n) | SizeSpec::Shortest { shortest_edge: n }) => Some((n, n)),
        };
        Ok(Self {
            style: Style::Transformers,
            shortest_edge,
            crop,
            rescale: raw.do_rescale.then_some(raw.rescale_factor),
            mean_std: raw
                .do_normalize
                .then(|| (raw.image_mean.unwrap_or(CLIP_MEAN), raw.image_std.unwrap_or(CLIP_STD))),
        })
    }

    /// open_clip's `image_transform(image_size, is_train=False)` with OpenAI's mean/std:
    /// `Resize(size, BICUBIC)` on the PIL image, `CenterCrop(size)`, `ToTensor`, `Normalize`.
    pub fn open_clip(image_size: usize) -> Self {
        Self {
            style: Style::OpenClip,
            shortest_edge: Some(image_size),
            crop: Some((image_size, image_size)),
            rescale: Some(1.0 / 255.0),
            mean_std: Some((CLIP_MEAN, CLIP_STD)),
        }
    }

    /// transformers' `get_resize_output_image_size(default_to_square=False)`: the short side
    /// becomes `edge`, the long one `int(edge · long / short)`.
    fn resized_size(width: usize, height: usize, edge: usize) -> (usize, usize) {
        let (short, long) = if width <= height { (width, height) } else { (height, width) };
        let new_long = (edge as f64 * long as f64 / short as f64) as usize;
        if width <= height { (edge, new_long) } else { (new_long, edge) }
    }

    /// The model's input [3, H, W] (channels first) for one image.
    pub fn pixels(&self, image: &Rgb8) -> Result<(Vec<f32>, [usize; 2])> {
        let img = self.geometry(image)?;
        let (w, h) = (img.width, img.height);
        let mut out = vec![0f32; 3 * h * w];
        for c in 0..3 {
            for i in 0..h * w {
                let v = img.data[i * 3 + c] as f64;
                let mut x = match (self.rescale, self.style) {
                    (Some(_), Style::OpenClip) => v as f32 / 255.0,
                    (Some(s), Style::Transformers) => (v * s) as f32,
                    (None, _) => v as f32,
                };
                if let Some((mean, std)) = &self.mean_std {
                    x = (x - mean[c]) / std[c];
                }
                out[c * h * w + i] = x;
            }
        }
        Ok((out, [h, w]))
    }

    /// The resize and crop: the 8-bit image the model's pixels are made from. Applying it to
    /// its own output changes nothing (the size already fits), so a caller may shrink each
    /// image as soon as it is decoded and keep only that.
    pub fn geometry(&self, image: &Rgb8) -> Result<Rgb8> {
        ensure!(image.width > 0 && image.height > 0, "an empty image ({}×{})", image.width, image.height);
        let (rw, rh) = match self.shortest_edge {
            Some(edge) => Self::resized_size(image.width, image.height, edge),
            None => (image.width, image.height),
        };
        let window = match self.crop {
            Some((h, w)) => {
                ensure!(rw >= w && rh >= h, "the image is {rw}×{rh} after resizing, smaller than the {w}×{h} crop",);
                let (left, top) = match self.style {
                    // transformers' `center_crop`: offsets rounded down.
                    Style::Transformers => ((rw - w) / 2, (rh - h) / 2),
                    Style::OpenClip => {
                        let offset = |n: usize, c: usize| round_half_even((n - c) as f64 / 2.0);
                        (offset(rw, w), offset(rh, h))
                    }
                };
                Window { left, top, width: w, height: h }
            }
            None => {
                // Without a crop the whole resized image is the input: bound it.
                ensure!(
                    rw.saturating_mul(rh) <= MAX_PIXELS,
                    "the image is {}×{}: resized to {rw}×{rh} it would exceed {MAX_PIXELS} pixels",
                    image.width,
                    image.height
                );
                Window { left: 0, top: 0, width: rw, height: rh }
            }
        };
        // Only the window's pixels are computed (an extreme aspect ratio costs no more).
        Ok(match self.shortest_edge {
            Some(_) => resize_window(image, rw, rh, window),
            None => crop_at(image, window.left, window.top, window.width, window.height),
        })
    }
}

impl ClipImageProcessor {
    /// The model's input for several images, [N, 3, H, W] on `device`.
    pub fn batch(&self, images: &[Rgb8], device: &burn::tensor::Device) -> Result<burn::tensor::Tensor<4>> {
        let mut pixels = Vec::new();
        let mut shape = [0, 0];
        for img in images {
            let (p, s) = self.pixels(img)?;
            pixels.extend(p);
            shape = s;
        }
        let data = burn::tensor::TensorData::new(pixels, [images.len(), 3, shape[0], shape[1]]);
        Ok(burn::tensor::Tensor::from_data(data, device))
    }
}

/// Decodes an image file (PNG, JPEG, WebP) to 8-bit RGB.
pub fn read_rgb(path: &Path) -> Result<Rgb8> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let img = crate::data::transform::decode_rgb(&bytes)
        .with_context(|| format!("{}: not a readable image", path.display()))?;
    Ok(img.into())
}
