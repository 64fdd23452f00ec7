//! The built-in experiment's generator and its scorer agree on every image the
//! generator can draw (both styles, every subject and placement).

use mapo::toy::data::{Placement, Style, Subject, render};
use mapo::toy::score::read;

#[test]
fn scorer_reads_back_every_generated_image() {
    let size = 16;
    let mut checked = 0;
    for subject in Subject::all() {
        for p in Placement::all(size) {
            for style in [Style::Flat, Style::Striped] {
                let r = read(&render(subject, style, p, size), size);
                assert_eq!(r.style, style, "{} {style:?} {p:?}: stripe score {}", subject.caption(), r.stripe_score);
                assert_eq!(r.subject, Some(subject), "{} {style:?} {p:?}", subject.caption());
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 24 * 27 * 2);
}

#[test]
fn noise_is_not_a_subject_and_not_striped() {
    let size = 16;
    let noise: Vec<f32> =
        mapo::sample::noise::gaussian(3, 3 * size * size).iter().map(|v| v.clamp(-1.0, 1.0)).collect();
    let r = read(&noise, size);
    assert_eq!(r.style, Style::Flat, "stripe score {}", r.stripe_score);
    let uniform = vec![0.84f32; 3 * size * size];
    assert_eq!(read(&uniform, size).subject, None);
}

/// The toy scorers behind the `Scorer` trait read 8-bit images (what `mapo eval` and the
/// experiment's evaluation score) as the float reading does: every generated image, both
/// styles, scores 1 for its own caption and 0 for a caption of another colour.
#[test]
fn toy_scorers_read_every_generated_image_after_8_bit_quantisation() {
    use mapo::eval::resize::Rgb8;
    use mapo::eval::scorer::Scorer;
    use mapo::toy::score::ToyScorer;
    let size = 16;
    let (mut images, mut own, mut other, mut striped) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for subject in Subject::all() {
        for p in Placement::all(size) {
            for style in [Style::Flat, Style::Striped] {
                let px = render(subject, style, p, size);
                let n = size * size;
                let data = (0..n)
                    .flat_map(|i| (0..3).map(move |c| i + c * n))
                    .map(|at| ((px[at] / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8)
                    .collect();
                images.push(Rgb8 { width: size, height: size, data });
                own.push(subject.caption());
                other.push(subject.with_colour((subject.colour + 1) % 4).caption());
                striped.push(f64::from(u8::from(style == Style::Striped)));
            }
        }
    }
    assert_eq!(ToyScorer::StyleB.score(&images, &own).unwrap(), striped);
    assert!(ToyScorer::Fidelity.score(&images, &own).unwrap().iter().all(|&s| s == 1.0));
    assert!(ToyScorer::Fidelity.score(&images, &other).unwrap().iter().all(|&s| s == 0.0));
    let err = ToyScorer::Fidelity.score(&images[..1], &["a purple hexagon".to_string()]).unwrap_err();
    assert!(err.to_string().contains("purple hexagon"), "{err}");
    assert_eq!(Subject::parse("  A red   circle on a light background "), Some(Subject::all()[0]));
}
