//! `mapo make-pairs`: a synthetic pairs file shaped for a model folder's UNet.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::TensorData;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::forward::component_dir;
use crate::models::io::write_tensors;
use crate::models::unet::UNetConfig;
use crate::sample::noise::standard_normal;

pub fn run(model: &Path, pairs: usize, size: &str, seed: u64, out: &Path) -> Result<()> {
    let (h, w) = size
        .split_once('x')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .with_context(|| format!("--size {size:?}: expected HxW, e.g. 8x8"))?;
    if pairs == 0 {
        bail!("--pairs must be > 0");
    }
    let (cfg, _) = crate::models::config::read_config::<UNetConfig>(&component_dir(model, "unet")?)?;
    let time_dim = cfg.addition_time_embed_dim.unwrap_or(0) * 6;
    let text_dim = cfg.projection_class_embeddings_input_dim.unwrap_or(time_dim) - time_dim;
    let c = cfg.in_channels;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = || standard_normal(&mut rng);
    let mut chosen = Vec::with_capacity(pairs * c * h * w);
    for p in 0..pairs {
        let phase = p as f32 * 0.7;
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let v = ((x as f32 * 0.8 + phase).sin() + (y as f32 * 0.6 + ch as f32).cos()) * 0.7;
                    chosen.push(v + 0.05 * normal());
                }
            }
        }
    }
    let rejected: Vec<f32> = (0..pairs * c * h * w).map(|_| normal()).collect();
    let context: Vec<f32> = (0..pairs * 77 * cfg.cross_attention_dim).map(|_| normal()).collect();
    let text: Vec<f32> = (0..pairs * text_dim).map(|_| normal()).collect();
    let (ph, pw) = ((h * 8) as f32, (w * 8) as f32);
    let time_ids: Vec<f32> = (0..pairs).flat_map(|_| [ph, pw, 0.0, 0.0, ph, pw]).collect();
    write_tensors(
        out,
        vec![
            ("chosen".into(), TensorData::new(chosen, [pairs, c, h, w])),
            ("rejected".into(), TensorData::new(rejected, [pairs, c, h, w])),
            ("encoder_hidden_states".into(), TensorData::new(context, [pairs, 77, cfg.cross_attention_dim])),
            ("text_embeds".into(), TensorData::new(text, [pairs, text_dim])),
            ("time_ids".into(), TensorData::new(time_ids, [pairs, 6])),
        ],
    )?;
    println!("wrote {pairs} pairs to {}", out.display());
    Ok(())
}
