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

/// Per output pixel in `outputs`: the first input pixel and the fixed-point weights
/// (`precompute_coeffs` + `normalize_coeffs_8bpc`). An unchanged size gets the identity
/// weight (exact: `(v·2²² + 2²¹) >> 22 = v`), as Pillow skips that pass.
fn coefficients(in_size: usize, out_size: usize, outputs: std::ops::Range<usize>) -> Vec<(usize, Vec<i32>)> {
    let one = (1u64 << PRECISION_BITS) as f64;
    if in_size == out_size {
        return outputs.map(|i| (i, vec![1 << PRECISION_BITS])).collect();
    }
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    outputs
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
            let fixed =
                k.iter().map(|&w| if w < 0.0 { (-0.5 + w * one) as i32 } else { (0.5 + w * one) as i32 }).collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A rectangle of an image: its top-left pixel and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub left: usize,
    pub top: usize,
    pub width: usize,
    pub height: usize,
}

/// `image.resize((width, height), Image.BICUBIC)` then the `window` of the result, computing
/// only the window's pixels: the horizontal pass runs on the input rows the window's
/// vertical weights read, the vertical pass on the window's rows. Work and memory are bounded
/// by the window and those rows, not by the resized size (a 1×300000 strip resized to a 224
/// short side would be 15 G pixels). Exact: every output pixel is computed as Pillow computes
/// it, with its rounding after each pass.
pub fn resize_window(image: &Rgb8, width: usize, height: usize, window: Window) -> Rgb8 {
    let Window { left, top, width: cw, height: ch } = window;
    assert!(left + cw <= width && top + ch <= height, "the window lies outside the resized image");
    let cols = coefficients(image.width, width, left..left + cw);
    let rows = coefficients(image.height, height, top..top + ch);
    let lo = rows.iter().map(|(first, _)| *first).min().unwrap_or(0);
    let hi = rows.iter().map(|(first, w)| first + w.len()).max().unwrap_or(lo);
    let acc = |weights: &[i32], at: &dyn Fn(usize) -> u8| {
        let mut a: i64 = 1 << (PRECISION_BITS - 1);
        for (j, &w) in weights.iter().enumerate() {
            a += at(j) as i64 * w as i64;
        }
        clip8(a)
    };
    // Horizontal pass: rows lo..hi of the input, the window's columns.
    let mut mid = vec![0u8; cw * (hi - lo) * 3];
    for y in lo..hi {
        for (x, (first, weights)) in cols.iter().enumerate() {
            for c in 0..3 {
                let row = y * image.width;
                mid[((y - lo) * cw + x) * 3 + c] = acc(weights, &|j| image.data[(row + first + j) * 3 + c]);
            }
        }
    }
    // Vertical pass on the window's rows.
    let mut data = vec![0u8; cw * ch * 3];
    for (y, (first, weights)) in rows.iter().enumerate() {
        for x in 0..cw {
            for c in 0..3 {
                data[(y * cw + x) * 3 + c] = acc(weights, &|j| mid[((first + j - lo) * cw + x) * 3 + c]);
            }
        }
    }
    Rgb8 { width: cw, height: ch, data }
}

/// `image.resize((width, height), Image.BICUBIC)`.
pub fn resize_bicubic(image: &Rgb8, width: usize, height: usize) -> Rgb8 {
    resize_window(image, width, height, Window { left: 0, top: 0, width, height })
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
            for (_, w) in coefficients(n_in, n_out, 0..n_out) {
                let sum: i64 = w.iter().map(|&v| v as i64).sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= w.len() as i64, "{n_in}→{n_out}: {sum}");
            }
        }
    }

    #[test]
    fn a_window_is_the_same_pixels_as_the_crop_of_the_whole_resize() {
        let img = Rgb8 { width: 29, height: 41, data: (0..29 * 41 * 3).map(|v| (v * 37 % 251) as u8).collect() };
        for (w, h) in [(64, 90), (13, 17), (29, 90), (64, 41)] {
            let whole = resize_bicubic(&img, w, h);
            for window in [
                Window { left: 0, top: 0, width: w, height: h },
                Window { left: w / 3, top: h / 4, width: w / 2, height: h / 3 },
                Window { left: w - 1, top: h - 1, width: 1, height: 1 },
            ] {
                let part = resize_window(&img, w, h, window);
                assert_eq!(
                    part,
                    crop_at(&whole, window.left, window.top, window.width, window.height),
                    "{w}×{h} {window:?}"
                );
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
