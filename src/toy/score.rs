//! A transparent scorer for the built-in experiment's samples: reads back the style,
//! shape, colour and background of a generated image with a few lines of arithmetic, so
//! that a reader can check what "style score" and "prompt fidelity" mean.
//!
//! - background: the palette background nearest to the mean of the border pixels;
//! - foreground: pixels farther than 0.3 (RGB distance, [0, 1] scale) from that colour;
//! - colour: the palette colour nearest to the foreground's mean;
//! - shape: the generator's shape whose mask (any placement) overlaps the foreground
//!   best (IoU), after one-pixel vertical gaps (stripes) are closed;
//! - style: striped when vertical pixel differences outweigh horizontal ones:
//!   (Σ|Δy| − Σ|Δx|) / (Σ|Δy| + Σ|Δx|) > 0.25. Flat shapes are near 0, stripes near 1.

use anyhow::{Result, bail, ensure};

use crate::toy::data::{BACKGROUNDS, COLOURS, Placement, SHAPES, Style, Subject, mask};

const FOREGROUND_DISTANCE: f32 = 0.3;
const STRIPE_THRESHOLD: f32 = 0.25;

#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub style: Style,
    pub stripe_score: f32,
    /// `None` when no pixel stands out from the background.
    pub subject: Option<Subject>,
}

/// Reads one [3, size, size] image in [-1, 1] (channel-major).
pub fn read(image: &[f32], size: usize) -> Reading {
    let px = |c: usize, y: usize, x: usize| (image[(c * size + y) * size + x] + 1.0) / 2.0;
    let rgb = |y: usize, x: usize| [px(0, y, x), px(1, y, x), px(2, y, x)];

    let (mut dv, mut dh) = (0.0f32, 0.0f32);
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                if y + 1 < size {
                    dv += (px(c, y + 1, x) - px(c, y, x)).abs();
                }
                if x + 1 < size {
                    dh += (px(c, y, x + 1) - px(c, y, x)).abs();
                }
            }
        }
    }
    let stripe_score = (dv - dh) / (dv + dh).max(1e-6);
    let style = if stripe_score > STRIPE_THRESHOLD { Style::Striped } else { Style::Flat };

    let border: Vec<[f32; 3]> =
        (0..size).flat_map(|i| [rgb(0, i), rgb(size - 1, i), rgb(i, 0), rgb(i, size - 1)]).collect();
    let bg_mean = mean(&border);
    let background = nearest(&bg_mean, BACKGROUNDS.iter().map(|b| b.1));

    let fg: Vec<bool> =
        (0..size * size).map(|i| dist(&rgb(i / size, i % size), &bg_mean) > FOREGROUND_DISTANCE).collect();
    let fg_pixels: Vec<[f32; 3]> = (0..size * size).filter(|&i| fg[i]).map(|i| rgb(i / size, i % size)).collect();
    if fg_pixels.is_empty() {
        return Reading { style, stripe_score, subject: None };
    }
    let colour = nearest(&mean(&fg_pixels), COLOURS.iter().map(|c| c.1));

    let closed: Vec<bool> = (0..size * size)
        .map(|i| {
            let (y, x) = (i / size, i % size);
            fg[i] || (y > 0 && y + 1 < size && fg[(y - 1) * size + x] && fg[(y + 1) * size + x])
        })
        .collect();
    let placements = Placement::all(size);
    let iou_of = |shape: usize| placements.iter().map(|&p| iou(&closed, &mask(shape, p, size))).fold(0.0f32, f32::max);
    let shape =
        (0..SHAPES.len()).map(|s| (s, iou_of(s))).max_by(|a, b| a.1.total_cmp(&b.1)).map(|(s, _)| s).expect("shapes");
    Reading { style, stripe_score, subject: Some(Subject { shape, colour, background }) }
}

fn mean(pixels: &[[f32; 3]]) -> [f32; 3] {
    let n = pixels.len().max(1) as f32;
    let mut m = [0.0; 3];
    for p in pixels {
        for c in 0..3 {
            m[c] += p[c] / n;
        }
    }
    m
}

fn dist(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt()
}

fn nearest(x: &[f32; 3], palette: impl Iterator<Item = [f32; 3]>) -> usize {
    palette
        .enumerate()
        .map(|(i, p)| (i, dist(x, &p)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
        .expect("palette")
}

fn iou(a: &[bool], b: &[bool]) -> f32 {
    let both = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let either = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    both as f32 / either.max(1) as f32
}

/// The reading as a reward model: `style_b` scores 1 for an image read as style B
/// (striped), `fidelity` 1 for one whose subject is the prompt's; the mean over a suite
/// is the share. Used by the built-in experiment and by `mapo eval` on the toy model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToyScorer {
    StyleB,
    Fidelity,
}

impl ToyScorer {
    pub const NAMES: [&str; 2] = ["style_b", "fidelity"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "style_b" => Some(Self::StyleB),
            "fidelity" => Some(Self::Fidelity),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::StyleB => "style_b",
            Self::Fidelity => "fidelity",
        }
    }

    /// Fidelity compares the reading with the prompt; the style ignores it.
    pub fn needs_text(&self) -> bool {
        *self == Self::Fidelity
    }
}

impl ToyScorer {
    /// The same scores on the model's float output ([3, size, size] in [-1, 1] each), before
    /// the clamping and 8-bit rounding of a PNG: what the built-in experiment's tables
    /// report. A sample near a threshold can read differently from its PNG (measured: 1 of
    /// 24 in some runs of the demo).
    pub fn score_pixels(&self, images: &[Vec<f32>], size: usize, prompts: &[String]) -> Result<Vec<f64>> {
        if self.needs_text() {
            ensure!(images.len() == prompts.len(), "{} images but {} prompts", images.len(), prompts.len());
        }
        images
            .iter()
            .enumerate()
            .map(|(i, img)| {
                let reading = read(img, size);
                Ok(match self {
                    Self::StyleB => f64::from(u8::from(reading.style == Style::Striped)),
                    Self::Fidelity => {
                        let Some(want) = Subject::parse(&prompts[i]) else {
                            bail!("prompt {:?} is not a caption of the built-in model's grammar", prompts[i])
                        };
                        f64::from(u8::from(reading.subject == Some(want)))
                    }
                })
            })
            .collect()
    }
}
