//! Training batches from the data stream (`data::stream`). Every pair's timestep, noise and
//! latent draw come from a generator seeded by (seed, the pair's cursor), its index in the
//! run's sequence of pairs: so a batch does not depend on how it is split across ranks or
//! micro-batches, and a resumed run draws exactly what an uninterrupted one would.
//!
//! A pairs file's keys: `chosen`, `rejected` [N,4,h,w] (scaled latents),
//! `encoder_hidden_states` [N,77,D], `text_embeds` [N,P], `time_ids` [N,6]. Unpaired rows
//! (Diffusion-KTO): `image` [N,4,h,w] and `label` [N] (1 desirable, 0 undesirable) instead of
//! `chosen` and `rejected`.

use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::stream::{PairRows, PairSource};
use crate::objective::Objective;
use crate::sample::noise::standard_normal;
use crate::sample::validate::Prompts;
use crate::train::step::PairBatch;

/// The generator of the pair at `cursor`.
fn pair_rng(seed: u64, cursor: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(
        seed.wrapping_add(0xA076_1D64_78BD_642F) ^ (cursor as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB),
    )
}

/// `rows` (the pairs at `cursors`) as a batch on `device`: one timestep per pair and noise
/// shared within a pair; with sampled latents, `mean + sd · ε` drawn after the noise, so
/// that sampling leaves the noise and timesteps unchanged.
/// `guidance`: FLUX's embedded guidance scale, the same for every pair (None elsewhere).
pub fn to_batch(
    rows: &PairRows,
    cursors: &[usize],
    seed: u64,
    objective: &Objective,
    guidance: Option<f64>,
    device: &Device,
) -> PairBatch {
    let (b, [c, h, w]) = (rows.n, rows.shape.latent);
    let l = c * h * w;
    let mut t = Vec::with_capacity(b);
    let mut noise = Vec::with_capacity(b * l);
    let (mut chosen, mut rejected) = (rows.chosen.clone(), rows.rejected.clone());
    for (i, &cursor) in cursors.iter().enumerate() {
        let mut rng = pair_rng(seed, cursor);
        t.push(objective.draw_timestep(&mut rng));
        noise.extend((0..l).map(|_| standard_normal(&mut rng)));
        if let Some((sd_w, sd_l)) = &rows.spread {
            // Unpaired rows have no rejected latents.
            for (x, sd) in [(&mut chosen, sd_w), (&mut rejected, sd_l)].into_iter().filter(|(x, _)| !x.is_empty()) {
                for k in i * l..(i + 1) * l {
                    x[k] += sd[k] * standard_normal(&mut rng);
                }
            }
        }
    }
    let latent = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [b, c, h, w]), device);
    let [tokens, d] = rows.shape.context;
    PairBatch {
        chosen: latent(chosen),
        rejected: rows.labels.is_none().then(|| latent(rejected)),
        labels: rows.labels.clone(),
        noise: latent(noise),
        timesteps: t,
        encoder_hidden_states: Tensor::from_data(TensorData::new(rows.context.clone(), [b, tokens, d]), device),
        text_embeds: Tensor::from_data(TensorData::new(rows.text_embeds.clone(), [b, rows.shape.pooled]), device),
        time_ids: Some(Tensor::from_data(TensorData::new(rows.time_ids.clone(), [b, 6]), device)),
        guidance: guidance.map(|g| Tensor::from_data(TensorData::new(vec![g as f32; b], [b]), device)),
    }
}

/// The first `n` pairs of the run's order (cursors 0..n) as one batch (evaluation).
pub fn first_batch(source: &PairSource, n: usize, objective: &Objective, device: &Device) -> anyhow::Result<PairBatch> {
    let (rows, cursors) = source.stream(0, 1).next(n)?;
    Ok(to_batch(&rows, &cursors, source.seed, objective, None, device))
}

/// The conditioning of the first `k` pairs in storage order (validation prompts), and the
/// latent shape.
pub fn prompts(source: &PairSource, k: usize, device: &Device) -> anyhow::Result<(Prompts, [usize; 3])> {
    let rows = source.first(k)?;
    let [tokens, d] = rows.shape.context;
    let prompts = Prompts {
        context: Tensor::from_data(TensorData::new(rows.context, [rows.n, tokens, d]), device),
        text_embeds: Tensor::from_data(TensorData::new(rows.text_embeds, [rows.n, rows.shape.pooled]), device),
        time_ids: Some(Tensor::from_data(TensorData::new(rows.time_ids, [rows.n, 6]), device)),
        negative: None,
        embedded_guidance: None,
    };
    Ok((prompts, rows.shape.latent))
}
