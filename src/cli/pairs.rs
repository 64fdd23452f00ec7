//! `mapo make-pairs`: a synthetic pairs file shaped for a model folder's UNet, or (with
//! `--cache`) a synthetic `mapo cache` folder of any size (streaming and memory tests).

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::TensorData;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::models::folder::component_dir;
use crate::models::io::write_tensors;
use crate::models::unet::UNetConfig;
use crate::sample::noise::standard_normal;

/// Synthetic pairs: chosen latents are smooth patterns, rejected ones noise.
struct Synthetic {
    c: usize,
    h: usize,
    w: usize,
    /// Text tokens per prompt: CLIP's 77 (SDXL), 77 + T5's (SD3).
    tokens: usize,
    context_dim: usize,
    text_dim: usize,
    rng: ChaCha8Rng,
}

struct Rows {
    chosen: Vec<f32>,
    rejected: Vec<f32>,
    context: Vec<f32>,
    text: Vec<f32>,
    time_ids: Vec<f32>,
}

impl Synthetic {
    /// Pairs `first..first + pairs`.
    fn rows(&mut self, first: usize, pairs: usize) -> Rows {
        let (c, h, w) = (self.c, self.h, self.w);
        let rng = &mut self.rng;
        let mut chosen = Vec::with_capacity(pairs * c * h * w);
        for p in first..first + pairs {
            let phase = p as f32 * 0.7;
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        let v = ((x as f32 * 0.8 + phase).sin() + (y as f32 * 0.6 + ch as f32).cos()) * 0.7;
                        chosen.push(v + 0.05 * standard_normal(rng));
                    }
                }
            }
        }
        let rejected: Vec<f32> = (0..pairs * c * h * w).map(|_| standard_normal(rng)).collect();
        let context: Vec<f32> = (0..pairs * self.tokens * self.context_dim).map(|_| standard_normal(rng)).collect();
        let text: Vec<f32> = (0..pairs * self.text_dim).map(|_| standard_normal(rng)).collect();
        let (ph, pw) = ((h * 8) as f32, (w * 8) as f32);
        let time_ids: Vec<f32> = (0..pairs).flat_map(|_| [ph, pw, 0.0, 0.0, ph, pw]).collect();
        Rows { chosen, rejected, context, text, time_ids }
    }
}

/// `--cache`: `pairs` synthetic pairs as a complete cache folder of `shard_size`-pair shards
/// (latent means = the pairs' latents ÷ the VAE's scaling factor + its shift, log-variances −6).
fn write_cache(model: &Path, pairs: usize, shard_size: usize, mut synth: Synthetic, out: &Path) -> Result<()> {
    use crate::data::cache::{CacheIndex, CacheMeta, append_shard, finish};
    let (vae_config, scale) = match component_dir(model, "vae") {
        Ok(dir) => {
            let (raw, _) = crate::models::config::read_config::<serde_json::Value>(&dir)?;
            let scale = raw["scaling_factor"].as_f64().unwrap_or(0.13025);
            (raw, scale)
        }
        Err(_) => (serde_json::json!({"block_out_channels": [1, 1, 1, 1], "scaling_factor": 0.13025}), 0.13025),
    };
    let factor = 1usize << vae_config["block_out_channels"].as_array().map_or(3, |a| a.len().saturating_sub(1));
    if out.join("index.json").exists() {
        bail!("{}: already holds a cache; choose another --out", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let transform = crate::data::transform::TransformConfig { resolution: synth.h * factor, ..Default::default() };
    let shift_factor = vae_config["shift_factor"].as_f64();
    let meta = CacheMeta {
        version: 1,
        model: std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf()),
        vae_config,
        scaling_factor: scale,
        shift_factor,
        resolution: synth.h * factor,
        transform,
        read: Default::default(),
        seed: 0,
        files: vec![],
    };
    let shift = meta.shift_factor.unwrap_or(0.0) as f32;
    let mut index = CacheIndex { meta, shards: vec![], next_position: 0, skipped: Default::default(), complete: false };
    let (c, h, w) = (synth.c, synth.h, synth.w);
    let mut done = 0;
    while done < pairs {
        let n = shard_size.min(pairs - done);
        let r = synth.rows(done, n);
        let unscale = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| x / scale as f32 + shift).collect() };
        let latent = |v: Vec<f32>| TensorData::new(v, [n, c, h, w]);
        let logvar = || TensorData::new(vec![-6f32; n * c * h * w], [n, c, h, w]);
        let tensors = vec![
            ("chosen_mean".into(), latent(unscale(r.chosen))),
            ("chosen_logvar".into(), logvar()),
            ("rejected_mean".into(), latent(unscale(r.rejected))),
            ("rejected_logvar".into(), logvar()),
            ("encoder_hidden_states".into(), TensorData::new(r.context, [n, synth.tokens, synth.context_dim])),
            ("text_embeds".into(), TensorData::new(r.text, [n, synth.text_dim])),
            ("time_ids".into(), TensorData::new(r.time_ids, [n, 6])),
            ("file_index".into(), TensorData::new(vec![0i64; n], [n])),
            ("row".into(), TensorData::new((done..done + n).map(|i| i as i64).collect::<Vec<_>>(), [n])),
        ];
        append_shard(out, &mut index, tensors, n, done + n)?;
        done += n;
    }
    finish(out, &mut index)?;
    println!("wrote a cache of {pairs} pairs in {} shards to {}", index.shards.len(), out.display());
    Ok(())
}

pub fn run(model: &Path, pairs: usize, size: &str, seed: u64, out: &Path, cache: Option<usize>) -> Result<()> {
    let (h, w) = size
        .split_once('x')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .with_context(|| format!("--size {size:?}: expected HxW, e.g. 8x8"))?;
    if pairs == 0 {
        bail!("--pairs must be > 0");
    }
    let rng = ChaCha8Rng::seed_from_u64(seed);
    let mut synth = match crate::family::Family::detect(model)? {
        crate::family::Family::Flux => {
            let dir = component_dir(model, "transformer")?;
            let (cfg, _) = crate::models::config::read_config::<crate::models::flux::FluxTransformerConfig>(&dir)?;
            // 16 of T5's tokens (the pipeline's default is 512): small files.
            let (c, tokens, context_dim, text_dim) =
                (cfg.latent_channels(), 16, cfg.joint_attention_dim, cfg.pooled_projection_dim);
            Synthetic { c, h, w, tokens, context_dim, text_dim, rng }
        }
        crate::family::Family::Sd3 => {
            let dir = component_dir(model, "transformer")?;
            let (cfg, _) = crate::models::config::read_config::<crate::models::sd3::SD3TransformerConfig>(&dir)?;
            // CLIP's 77 tokens and 16 of T5's (the pipeline's default is 256): small files.
            let (c, tokens, context_dim, text_dim) =
                (cfg.in_channels, 77 + 16, cfg.joint_attention_dim, cfg.pooled_projection_dim);
            Synthetic { c, h, w, tokens, context_dim, text_dim, rng }
        }
        _ => {
            let (cfg, _) = crate::models::config::read_config::<UNetConfig>(&component_dir(model, "unet")?)?;
            let time_dim = cfg.addition_time_embed_dim.unwrap_or(0) * 6;
            let text_dim = cfg.projection_class_embeddings_input_dim.unwrap_or(time_dim) - time_dim;
            Synthetic { c: cfg.in_channels, h, w, tokens: 77, context_dim: cfg.cross_attention_dim, text_dim, rng }
        }
    };
    let (c, tokens, context_dim) = (synth.c, synth.tokens, synth.context_dim);
    if let Some(shard_size) = cache {
        if shard_size == 0 {
            bail!("--shard-size must be > 0");
        }
        return write_cache(model, pairs, shard_size, synth, out);
    }
    let Rows { chosen, rejected, context, text, time_ids } = synth.rows(0, pairs);
    write_tensors(
        out,
        vec![
            ("chosen".into(), TensorData::new(chosen, [pairs, c, h, w])),
            ("rejected".into(), TensorData::new(rejected, [pairs, c, h, w])),
            ("encoder_hidden_states".into(), TensorData::new(context, [pairs, tokens, context_dim])),
            ("text_embeds".into(), TensorData::new(text, [pairs, synth.text_dim])),
            ("time_ids".into(), TensorData::new(time_ids, [pairs, 6])),
        ],
    )?;
    println!("wrote {pairs} pairs to {}", out.display());
    Ok(())
}
