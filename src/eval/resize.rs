//! Pillow's `Image.resize(..., BICUBIC)` on 8-bit RGB, reproduced step for step, because
//! the reward models were trained and are scored on images PIL resized: separable passes
//! (horizontal, then vertical), each with the cubic kernel (a = −0.5) widened by the
//! downscaling factor (antialiasing), coefficients in 22-bit fixed point, and the result of
//! each pass rounded and clipped to 8 bits (libImaging/Resample.c).

/// An 8-bit RGB image, row-major, interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl From<image::RgbImage> for Rgb8 {
    fn from(img: image::RgbImage) -> Self {
        let (width, height) = (img.width() as usize, img.height() as usize);
        Self { width, height, data: img.into_raw() }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: the first input pixel and the fixed-point weights (`precompute_coeffs`
/// + `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates toward zero; the values here are ≥ −0.5 + 0.5.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                k.iter_mut().for_each(|w| *w /= total);
            }
            let one = (1u64 << PRECISION_BITS) as f64;
            let fixed =
                k.iter().map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 }).collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass along rows (`horizontal`) or columns.
fn pass(src: &Rgb8, out_w: usize, out_h: usize, horizontal: bool) -> Rgb8 {
    let coeffs = if horizontal { coefficients(src.width, out_w) } else { coefficients(src.height, out_h) };
    let mut data = vec![0u8; out_w * out_h * 3];
    for y in 0..out_h {
        for x in 0..out_w {
            let (first, weights) = if horizontal { &coeffs[x] } else { &coeffs[y] };
            for c in 0..3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (j, &w) in weights.iter().enumerate() {
                    let (sx, sy) = if horizontal { (first + j, y) } else { (x, first + j) };
                    acc += src.data[(sy * src.width + sx) * 3 + c] as i64 * w as i64;
                }
                data[(y * out_w + x) * 3 + c] = clip8(acc);
            }
        }
    }
    Rgb8 { width: out_w, height: out_h, data }
}

/// `image.resize((width, height), Image.BICUBIC)`.
pub fn resize_bicubic(image: &Rgb8, width: usize, height: usize) -> Rgb8 {
    let mut out = image.clone();
    if width != image.width {
        out = pass(&out, width, out.height, true);
    }
    if height != image.height {
        out = pass(&out, width, height, false);
    }
    out
}

/// The central `width × height` region, offsets rounded down (transformers' `center_crop`
/// for images at least that large).
pub fn center_crop(image: &Rgb8, width: usize, height: usize) -> Rgb8 {
    let (top, left) = ((image.height.saturating_sub(height)) / 2, (image.width.saturating_sub(width)) / 2);
    crop_at(image, left, top, width, height)
}

/// The `width × height` region whose top-left pixel is (`left`, `top`).
pub fn crop_at(image: &Rgb8, left: usize, top: usize, width: usize, height: usize) -> Rgb8 {
    let mut data = Vec::with_capacity(width * height * 3);
    for y in top..top + height {
        let row = (y * image.width + left) * 3;
        data.extend_from_slice(&image.data[row..row + width * 3]);
    }
    Rgb8 { width, height, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_untouched_and_weights_sum_to_one() {
        let img = Rgb8 { width: 3, height: 2, data: (0..18).map(|v| v as u8 * 10).collect() };
        assert_eq!(resize_bicubic(&img, 3, 2), img);
        for (n_in, n_out) in [(10, 3), (3, 10), (224, 224), (500, 224)] {
            for (_, w) in coefficients(n_in, n_out) {
                let sum: i64 = w.iter().map(|&v| v as i64).sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= w.len() as i64, "{n_in}→{n_out}: {sum}");
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let img = Rgb8 { width: 37, height: 23, data: vec![200; 37 * 23 * 3] };
        let out = resize_bicubic(&img, 11, 17);
        assert!(out.data.iter().all(|&v| v == 200), "{:?}", &out.data[..12]);
    }
}
