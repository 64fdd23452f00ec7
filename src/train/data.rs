//! Training pairs for the trainer: a safetensors "pairs file" of precomputed latents and
//! prompt embeddings, read in a seeded, resumable order.
//!
//! Keys: `chosen`, `rejected` [N,4,h,w] (scaled latents), `encoder_hidden_states`
//! [N,77,D], `text_embeds` [N,P], `time_ids` [N,6].

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::models::io::SafeTensorFiles;
use crate::models::unet::UNetConfig;
use crate::models::unet::inputs::{InputShapes, check_shapes};
use crate::sample::noise::standard_normal;
use crate::train::step::PairBatch;

pub struct PairsFile {
    chosen: Tensor<4>,
    rejected: Tensor<4>,
    context: Tensor<3>,
    text_embeds: Tensor<2>,
    time_ids: Tensor<2>,
    /// Scaled standard deviations of the VAE's latent distributions (chosen, rejected),
    /// when latents are sampled per batch instead of taken at the mean.
    spread: Option<(Tensor<4>, Tensor<4>)>,
    pub len: usize,
}

impl PairsFile {
    /// A pairs file, or a `mapo cache` folder (latents = VAE mean × scaling factor).
    pub fn open(path: &Path, device: &Device) -> Result<Self> {
        Self::open_with(path, device, false)
    }

    /// As [`PairsFile::open`]; with `sample_latents`, a cache's latents are drawn from the
    /// VAE's distribution in every batch (`mean + exp(logvar / 2) · ε`, times the scaling
    /// factor), as training from images does.
    pub fn open_with(path: &Path, device: &Device, sample_latents: bool) -> Result<Self> {
        if path.is_dir() {
            return Self::from_cache(path, device, sample_latents);
        }
        if sample_latents {
            bail!("{}: sample_latents needs a `mapo cache` folder (a pairs file holds latents only)", path.display());
        }
        let f = SafeTensorFiles::open_file(path)?;
        let chosen = f.float::<4>("chosen", device, DType::F32)?;
        let len = chosen.dims()[0];
        let me = Self {
            rejected: f.float::<4>("rejected", device, DType::F32)?,
            context: f.float::<3>("encoder_hidden_states", device, DType::F32)?,
            text_embeds: f.float::<2>("text_embeds", device, DType::F32)?,
            time_ids: f.float::<2>("time_ids", device, DType::F32)?,
            spread: None,
            chosen,
            len,
        };
        for (name, n) in [
            ("rejected", me.rejected.dims()[0]),
            ("encoder_hidden_states", me.context.dims()[0]),
            ("text_embeds", me.text_embeds.dims()[0]),
            ("time_ids", me.time_ids.dims()[0]),
        ] {
            if n != len {
                bail!("{}: {name} has {n} rows, chosen has {len}", path.display());
            }
        }
        if me.rejected.dims() != me.chosen.dims() {
            bail!(
                "{}: rejected {:?} and chosen {:?} differ in shape",
                path.display(),
                me.rejected.dims(),
                me.chosen.dims()
            );
        }
        if len == 0 {
            bail!("{}: no pairs", path.display());
        }
        Ok(me)
    }

    fn from_cache(dir: &Path, device: &Device, sample_latents: bool) -> Result<Self> {
        let index = crate::data::cache::CacheIndex::read(dir)?;
        if !index.complete {
            bail!(
                "{}: the cache is incomplete ({} pairs so far); finish it with `mapo cache` first",
                dir.display(),
                index.pairs()
            );
        }
        let scale = index.meta.scaling_factor;
        let (mut chosen, mut rejected, mut context, mut text_embeds, mut time_ids) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut chosen_sd, mut rejected_sd) = (vec![], vec![]);
        // Every shard's tensors must agree with the first's beyond the row count (checked from
        // the headers, before anything is loaded): `cat` of mismatched shards would panic.
        let keys = ["chosen_mean", "rejected_mean", "encoder_hidden_states", "text_embeds", "time_ids"];
        let mut first: Option<Vec<Vec<usize>>> = None;
        for shard in &index.shards {
            let f = SafeTensorFiles::open_file(&dir.join(&shard.file))?;
            let tails: Vec<Vec<usize>> =
                keys.iter().map(|k| f.shape(k).map_or(vec![], |s| s.get(1..).unwrap_or_default().to_vec())).collect();
            match &first {
                None => first = Some(tails),
                Some(want) if *want != tails => bail!(
                    "{}: shard {} holds tensors of shapes {tails:?} (after the row count) for {keys:?}; the first \
                     shard has {want:?}",
                    dir.display(),
                    shard.file
                ),
                Some(_) => {}
            }
            if sample_latents {
                let sd = |k: &str| -> Result<Tensor<4>> {
                    Ok(f.float::<4>(k, device, DType::F32)?.mul_scalar(0.5).exp().mul_scalar(scale))
                };
                chosen_sd.push(sd("chosen_logvar")?);
                rejected_sd.push(sd("rejected_logvar")?);
            }
            chosen.push(f.float::<4>("chosen_mean", device, DType::F32)?.mul_scalar(scale));
            rejected.push(f.float::<4>("rejected_mean", device, DType::F32)?.mul_scalar(scale));
            context.push(f.float::<3>("encoder_hidden_states", device, DType::F32)?);
            text_embeds.push(f.float::<2>("text_embeds", device, DType::F32)?);
            time_ids.push(f.float::<2>("time_ids", device, DType::F32)?);
        }
        if chosen.is_empty() {
            bail!("{}: the cache holds no pairs", dir.display());
        }
        let chosen = Tensor::cat(chosen, 0);
        let len = chosen.dims()[0];
        Ok(Self {
            chosen,
            rejected: Tensor::cat(rejected, 0),
            context: Tensor::cat(context, 0),
            text_embeds: Tensor::cat(text_embeds, 0),
            time_ids: Tensor::cat(time_ids, 0),
            spread: sample_latents.then(|| (Tensor::cat(chosen_sd, 0), Tensor::cat(rejected_sd, 0))),
            len,
        })
    }

    /// The pairs' shapes against the UNet they will train (a pairs file or cache made for
    /// another model would otherwise fail deep inside the first step).
    pub fn check_model(&self, source: &Path, config: &UNetConfig) -> Result<()> {
        let n = [self.len];
        let shapes = InputShapes {
            sample: &self.chosen.dims(),
            timestep: &n,
            encoder_hidden_states: &self.context.dims(),
            text_embeds: Some(&self.text_embeds.dims()),
            time_ids: Some(&self.time_ids.dims()),
        };
        check_shapes(config, &shapes).with_context(|| {
            format!("{}: the pairs do not fit the model's UNet (made for another model?)", source.display())
        })
    }

    /// The conditioning of the first `k` pairs (validation prompts), and the latent shape.
    pub fn prompts(&self, k: usize) -> (crate::sample::validate::Prompts, [usize; 3]) {
        let k = k.min(self.len);
        let [_, c, h, w] = self.chosen.dims();
        let prompts = crate::sample::validate::Prompts {
            context: self.context.clone().narrow(0, 0, k),
            text_embeds: self.text_embeds.clone().narrow(0, 0, k),
            time_ids: self.time_ids.clone().narrow(0, 0, k),
            negative: None,
        };
        (prompts, [c, h, w])
    }

    /// The pair indices of micro-batch `index` (0, 1, ... over the whole run): a seeded
    /// permutation per epoch, so any position can be recomputed on resume.
    pub fn indices(&self, seed: u64, index: usize, batch: usize) -> Vec<usize> {
        (index * batch..(index + 1) * batch)
            .map(|cursor| {
                let (epoch, offset) = (cursor / self.len, cursor % self.len);
                let mut order: Vec<usize> = (0..self.len).collect();
                order
                    .shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
                order[offset]
            })
            .collect()
    }

    /// Micro-batch `index`: its pairs, one timestep per pair and noise shared within a pair,
    /// all drawn from a generator seeded by `(seed, index)`.
    pub fn batch(&self, seed: u64, index: usize, batch: usize, timesteps: usize) -> PairBatch {
        let idx = self.indices(seed, index, batch);
        let device = self.chosen.device();
        let rows =
            Tensor::<1, Int>::from_data(TensorData::new(idx.iter().map(|&i| i as i64).collect(), [batch]), &device);
        let chosen = self.chosen.clone().select(0, rows.clone());
        let [_, c, h, w] = chosen.dims();
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(0xA076_1D64_78BD_642F) ^ index as u64);
        let t: Vec<i64> = (0..batch).map(|_| rng.random_range(0..timesteps as i64)).collect();
        let noise: Vec<f32> = (0..batch * c * h * w).map(|_| standard_normal(&mut rng)).collect();
        // Drawn after the noise, so that sampling leaves the noise and timesteps unchanged.
        let (chosen, rejected) = match &self.spread {
            None => (chosen, self.rejected.clone().select(0, rows.clone())),
            Some((sd_w, sd_l)) => {
                let mut eps = |sd: &Tensor<4>| {
                    let e: Vec<f32> = (0..batch * c * h * w).map(|_| standard_normal(&mut rng)).collect();
                    sd.clone().select(0, rows.clone())
                        * Tensor::from_data(TensorData::new(e, [batch, c, h, w]), &device)
                };
                let (dw, dl) = (eps(sd_w), eps(sd_l));
                (chosen + dw, self.rejected.clone().select(0, rows.clone()) + dl)
            }
        };
        PairBatch {
            rejected,
            noise: Tensor::from_data(TensorData::new(noise, [batch, c, h, w]), &device),
            timesteps: t,
            encoder_hidden_states: self.context.clone().select(0, rows.clone()),
            text_embeds: self.text_embeds.clone().select(0, rows.clone()),
            time_ids: self.time_ids.clone().select(0, rows),
            chosen,
        }
    }
}
