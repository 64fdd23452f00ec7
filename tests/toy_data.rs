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
