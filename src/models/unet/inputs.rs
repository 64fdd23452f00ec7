//! The UNet's inputs checked against its config before any tensor op: a wrong shape deep in
//! Burn is a panic (or, with an empty batch, a segfault), never an error a user can read.

use anyhow::{Result, bail};

use super::config::UNetConfig;
use crate::models::inputs::expect_shape as expect;

/// The shapes of one UNet call's inputs (`text_embeds`/`time_ids` only for SDXL-type UNets).
pub struct InputShapes<'a> {
    pub sample: &'a [usize],
    pub timestep: &'a [usize],
    pub encoder_hidden_states: &'a [usize],
    pub text_embeds: Option<&'a [usize]>,
    pub time_ids: Option<&'a [usize]>,
}

/// Every input's rank, size and batch against `config`, naming the tensor at fault.
pub fn check_shapes(config: &UNetConfig, x: &InputShapes) -> Result<()> {
    expect("sample", x.sample, &[None, Some(config.in_channels), None, None])?;
    let b = Some(x.sample[0]);
    expect("timestep", x.timestep, &[b])?;
    expect("encoder_hidden_states", x.encoder_hidden_states, &[b, None, Some(config.cross_attention_dim)])?;
    if config.addition_embed_type.as_deref() == Some("text_time") {
        let (Some(te), Some(ti)) = (x.text_embeds, x.time_ids) else {
            bail!("this UNet (addition_embed_type \"text_time\") needs text_embeds and time_ids");
        };
        let pooled = config
            .projection_class_embeddings_input_dim
            .zip(config.addition_time_embed_dim)
            .map(|(total, per_id)| total.saturating_sub(6 * per_id));
        expect("text_embeds", te, &[b, pooled])?;
        expect("time_ids", ti, &[b, Some(6)])?;
    }
    Ok(())
}

/// Timesteps must be finite and within what the embedding was trained on (a NaN would turn
/// into t = 0 when cast to an integer; 1e30 overflows).
pub fn check_timesteps(values: &[f64]) -> Result<()> {
    if let Some(t) = values.iter().find(|t| !t.is_finite() || **t < 0.0 || **t > 1e4) {
        bail!("timestep: {t} is outside [0, 10000]");
    }
    Ok(())
}
