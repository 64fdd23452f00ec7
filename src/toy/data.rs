//! The built-in experiment's generated data: small RGB images of one simple subject
//! (shape × colour × background), each renderable in two styles, with captions from a
//! tiny grammar. Deterministic: a placement (small offset and size jitter) is the only
//! variation, and it is drawn from a seeded generator.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub const SHAPES: [&str; 3] = ["circle", "square", "triangle"];
/// Colours in [0, 1] RGB, far apart so that a sample's colour is unambiguous.
pub const COLOURS: [(&str, [f32; 3]); 4] = [
    ("red", [0.9, 0.12, 0.12]),
    ("green", [0.1, 0.75, 0.2]),
    ("blue", [0.15, 0.3, 0.95]),
    ("yellow", [0.95, 0.85, 0.1]),
];
pub const BACKGROUNDS: [(&str, [f32; 3]); 2] = [("light", [0.92, 0.92, 0.92]), ("dark", [0.12, 0.12, 0.12])];

/// Style A is `Flat` (what the reference model is pretrained on); style B is `Striped`:
/// every other row of the shape shows the background (horizontal stripes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    Flat,
    Striped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subject {
    pub shape: usize,
    pub colour: usize,
    pub background: usize,
}

impl Subject {
    /// Every subject of the grammar, in a fixed order.
    pub fn all() -> Vec<Subject> {
        let mut out = Vec::new();
        for background in 0..BACKGROUNDS.len() {
            for colour in 0..COLOURS.len() {
                for shape in 0..SHAPES.len() {
                    out.push(Subject { shape, colour, background });
                }
            }
        }
        out
    }

    pub fn caption(&self) -> String {
        format!(
            "a {} {} on a {} background",
            COLOURS[self.colour].0, SHAPES[self.shape], BACKGROUNDS[self.background].0
        )
    }

    /// The subject a caption of the grammar names (`None` for any other text).
    pub fn parse(caption: &str) -> Option<Subject> {
        let wanted = caption.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        Self::all().into_iter().find(|s| s.caption() == wanted)
    }

    /// The same subject in another colour (for within-style "wrong colour" pairs).
    pub fn with_colour(self, colour: usize) -> Self {
        Self { colour, ..self }
    }
}

/// Where the shape sits: centre offset in pixels and radius.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    pub dx: i32,
    pub dy: i32,
    pub radius: f32,
}

impl Placement {
    /// Every placement the generator draws from (offsets −1..=1, three sizes).
    pub fn all(size: usize) -> Vec<Placement> {
        let mut out = Vec::new();
        for radius in Self::radii(size) {
            for dy in -1..=1 {
                for dx in -1..=1 {
                    out.push(Placement { dx, dy, radius });
                }
            }
        }
        out
    }

    pub fn random(rng: &mut ChaCha8Rng, size: usize) -> Self {
        let radii = Self::radii(size);
        Placement {
            dx: rng.random_range(-1..=1),
            dy: rng.random_range(-1..=1),
            radius: radii[rng.random_range(0..radii.len())],
        }
    }

    fn radii(size: usize) -> [f32; 3] {
        let s = size as f32;
        [0.31 * s, 0.34 * s, 0.37 * s]
    }
}

/// The shape's pixels, row-major `size × size`.
pub fn mask(shape: usize, p: Placement, size: usize) -> Vec<bool> {
    let (cx, cy) = (size as f32 / 2.0 + p.dx as f32, size as f32 / 2.0 + p.dy as f32);
    let r = p.radius;
    let mut out = vec![false; size * size];
    for y in 0..size {
        for x in 0..size {
            let (u, v) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            out[y * size + x] = match SHAPES[shape] {
                "circle" => u * u + v * v <= r * r,
                "square" => u.abs() <= 0.82 * r && v.abs() <= 0.82 * r,
                // Upright: apex at the top, base at the bottom, as wide as it is tall.
                _ => v >= -r && v <= 0.8 * r && u.abs() <= (v + r) * 0.5,
            };
        }
    }
    out
}

/// A [3, size, size] image (channel-major) in [-1, 1].
pub fn render(subject: Subject, style: Style, p: Placement, size: usize) -> Vec<f32> {
    let m = mask(subject.shape, p, size);
    let (fg, bg) = (COLOURS[subject.colour].1, BACKGROUNDS[subject.background].1);
    let mut out = vec![0.0; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            let inside = m[y * size + x] && (style == Style::Flat || y % 2 == 0);
            let rgb = if inside { fg } else { bg };
            for c in 0..3 {
                out[(c * size + y) * size + x] = rgb[c] * 2.0 - 1.0;
            }
        }
    }
    out
}

/// A seeded list of `(subject, placement)` draws covering every subject `per_subject` times.
pub fn draws(seed: u64, per_subject: usize, size: usize) -> Vec<(Subject, Placement)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for s in Subject::all() {
        for _ in 0..per_subject {
            out.push((s, Placement::random(&mut rng, size)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_are_distinct() {
        let all = Subject::all();
        let mut captions: Vec<String> = all.iter().map(|s| s.caption()).collect();
        captions.sort();
        captions.dedup();
        assert_eq!(captions.len(), all.len());
    }

    #[test]
    fn stripes_remove_every_other_row() {
        let s = Subject { shape: 1, colour: 0, background: 0 };
        let p = Placement { dx: 0, dy: 0, radius: 5.5 };
        let (flat, striped) = (render(s, Style::Flat, p, 16), render(s, Style::Striped, p, 16));
        let differs = flat.iter().zip(&striped).filter(|(a, b)| a != b).count();
        assert!(differs > 0 && differs < flat.len() / 2);
    }
}
