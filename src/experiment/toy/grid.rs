//! `samples.png`: rows = runs (first seed of each setting), columns = fixed prompts (their
//! words as the column header), all from the same sampling noise, each image enlarged 4×
//! with nearest-neighbour pixels.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::experiment::report::RunData;
use crate::models::io::SafeTensorFiles;
use crate::toy::data::Subject;

const SCALE: u32 = 4;
const GAP: u32 = 4;
const LABEL: u32 = 300;
/// Column headers: the prompt's words, one a line (colour, shape, background).
const HEADER: u32 = 46;

/// Draws the grid; returns the column prompts, or None when no run saved samples.
pub fn samples(path: &Path, runs: &[RunData]) -> Result<Option<Vec<String>>> {
    crate::eval::plot::register_font();
    let subjects = Subject::all();
    // Every other subject: all shapes, colours and both backgrounds appear.
    let columns: Vec<usize> = (0..subjects.len()).step_by(2).collect();
    let mut rows: Vec<(String, Vec<f32>, usize)> = Vec::new();
    let mut seen = Vec::new();
    for r in runs {
        let key = (r.summary.method.clone(), r.summary.varied.clone(), r.summary.backend.clone());
        let file = r.dir.join("samples.safetensors");
        if seen.contains(&key) || !file.is_file() {
            continue;
        }
        let f = SafeTensorFiles::open_file(&file)?;
        let view = f.get("samples").ok_or_else(|| anyhow!("{}: no `samples` tensor", file.display()))?;
        let shape = view.shape.clone();
        let values: Vec<f32> = view.to_data()?.convert::<f32>().try_to_vec().map_err(|e| anyhow!("{e:?}"))?;
        if shape.len() != 4 || shape[0] % subjects.len() != 0 {
            continue; // not the built-in model's samples
        }
        seen.push(key);
        rows.push((format!("{} [{}]", r.summary.run, r.summary.backend), values, shape[2]));
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let size = rows[0].2 as u32;
    let cell = size * SCALE + GAP;
    let (w, h) = (LABEL + cell * columns.len() as u32, HEADER + cell * rows.len() as u32 + GAP);
    let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for (ri, (_, values, s)) in rows.iter().enumerate() {
        let s = *s;
        let per_subject = values.len() / (3 * s * s) / subjects.len();
        for (ci, &subject) in columns.iter().enumerate() {
            let k = subject * per_subject;
            for y in 0..s {
                for x in 0..s {
                    let at = |c: usize| values[((k * 3 + c) * s + y) * s + x];
                    let px = |v: f32| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8;
                    let rgb = image::Rgb([px(at(0)), px(at(1)), px(at(2))]);
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            let x0 = LABEL + ci as u32 * cell + x as u32 * SCALE + dx;
                            let y0 = HEADER + GAP + ri as u32 * cell + y as u32 * SCALE + dy;
                            img.put_pixel(x0, y0, rgb);
                        }
                    }
                }
            }
        }
    }
    let mut buf = img.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        for (ci, &subject) in columns.iter().enumerate() {
            let caption = subjects[subject].caption();
            let words = caption.split(' ').filter(|w| !["a", "on", "background"].contains(w));
            for (line, word) in words.enumerate() {
                let at = ((LABEL + ci as u32 * cell) as i32, 4 + 13 * line as i32);
                root.draw_text(word, &("sans-serif", 11).into_font().color(&BLACK), at)
                    .map_err(|e| anyhow!("{e:?}"))?;
            }
        }
        for (ri, (name, _, _)) in rows.iter().enumerate() {
            let y = (HEADER + GAP + ri as u32 * cell + cell / 2 - 8) as i32;
            root.draw_text(name, &("sans-serif", 13).into_font().color(&BLACK), (6, y))
                .map_err(|e| anyhow!("{e:?}"))?;
        }
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size");
    crate::util::save_image(path, &img)?;
    Ok(Some(columns.iter().map(|&i| subjects[i].caption()).collect()))
}
