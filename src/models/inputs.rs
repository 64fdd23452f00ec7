//! Inputs of the VAE and the text encoders checked against their configs before any tensor
//! op (the UNet's are in `unet/inputs.rs`): shapes, token-id ranges and finiteness, each
//! error naming the tensor and what was expected.

use anyhow::{Result, bail, ensure};

use super::clip::ClipTextConfig;
use super::flux::FluxTransformerConfig;
use super::sd3::SD3TransformerConfig;
use super::vae::VaeConfig;

/// `got` against `want` (`None`: any size), and no dimension empty.
pub fn expect_shape(name: &str, got: &[usize], want: &[Option<usize>]) -> Result<()> {
    let fits = got.len() == want.len() && got.iter().zip(want).all(|(g, w)| w.is_none_or(|w| *g == w));
    if !fits {
        let want: Vec<String> = want.iter().map(|w| w.map_or("_".into(), |w| w.to_string())).collect();
        bail!("{name}: expected shape [{}], found {got:?}", want.join(", "));
    }
    ensure!(got.iter().all(|&d| d > 0), "{name}: shape {got:?} has an empty dimension");
    Ok(())
}

/// Images for `vae-encode`: [B, in_channels, H, W] with H, W divisible by the encoder's
/// downsampling factor.
pub fn check_vae_images(config: &VaeConfig, shape: &[usize]) -> Result<()> {
    expect_shape("sample", shape, &[None, Some(config.in_channels), None, None])?;
    let factor = config.scale_factor();
    ensure!(
        shape[2].is_multiple_of(factor) && shape[3].is_multiple_of(factor),
        "sample: height and width {}×{} must be multiples of {factor} (the VAE's downsampling)",
        shape[2],
        shape[3]
    );
    Ok(())
}

/// Latents for `vae-decode`: [B, latent_channels, h, w].
pub fn check_vae_latents(config: &VaeConfig, shape: &[usize]) -> Result<()> {
    expect_shape("latents", shape, &[None, Some(config.latent_channels), None, None])
}

/// Token ids [B, L]: 0 < L ≤ max_position_embeddings, every id in [0, vocab_size).
pub fn check_token_ids(config: &ClipTextConfig, shape: &[usize], ids: &[i64]) -> Result<()> {
    expect_shape("input_ids", shape, &[None, None])?;
    ensure!(
        shape[1] <= config.max_position_embeddings,
        "input_ids: {} tokens per prompt, the encoder has {} positions",
        shape[1],
        config.max_position_embeddings
    );
    if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| **id < 0 || **id >= config.vocab_size as i64) {
        bail!("input_ids: id {id} at position {i} is outside the vocabulary [0, {})", config.vocab_size);
    }
    Ok(())
}

/// The inputs of SD3's transformer (docs/design.md §2b): `hidden_states` [B, C, H, W],
/// `encoder_hidden_states` [B, L, joint_attention_dim], `pooled_projections` [B, P],
/// `timestep` [B]; H and W multiples of the patch and within the position table.
pub fn check_sd3_inputs(c: &SD3TransformerConfig, shape: &dyn Fn(&str) -> Result<Vec<usize>>) -> Result<()> {
    let x = shape("hidden_states")?;
    expect_shape("hidden_states", &x, &[None, Some(c.in_channels), None, None])?;
    let b = Some(x[0]);
    expect_shape("encoder_hidden_states", &shape("encoder_hidden_states")?, &[b, None, Some(c.joint_attention_dim)])?;
    expect_shape("pooled_projections", &shape("pooled_projections")?, &[b, Some(c.pooled_projection_dim)])?;
    expect_shape("timestep", &shape("timestep")?, &[b])?;
    super::sd3::embed::check_patches(x[2], x[3], c.patch_size, c.pos_embed_max_size)
        .map_err(|e| anyhow::anyhow!("hidden_states: {e}"))
}

/// The inputs of FLUX's transformer (docs/design.md §2b): `hidden_states` [B, N, in_channels]
/// (packed), `encoder_hidden_states` [B, L, joint_attention_dim], `pooled_projections` [B, P],
/// `timestep` [B], `img_ids` [N, 3], `txt_ids` [L, 3] (no batch dimension), and `guidance` [B]
/// exactly when the model embeds it.
pub fn check_flux_inputs(c: &FluxTransformerConfig, shape: &dyn Fn(&str) -> Option<Vec<usize>>) -> Result<()> {
    let need = |n: &str| shape(n).ok_or_else(|| anyhow::anyhow!("input tensor {n:?} is missing"));
    let x = need("hidden_states")?;
    if x.len() == 4 {
        bail!(
            "hidden_states: shape {x:?} is unpacked latents; FLUX's transformer takes packed tokens [B, N, {}]              (FluxPipeline._pack_latents: 2×2 patches)",
            c.in_channels
        );
    }
    expect_shape("hidden_states", &x, &[None, None, Some(c.in_channels)])?;
    let b = Some(x[0]);
    let context = need("encoder_hidden_states")?;
    expect_shape("encoder_hidden_states", &context, &[b, None, Some(c.joint_attention_dim)])?;
    expect_shape("pooled_projections", &need("pooled_projections")?, &[b, Some(c.pooled_projection_dim)])?;
    expect_shape("timestep", &need("timestep")?, &[b])?;
    let axes = Some(c.axes_dims_rope.len());
    expect_shape("img_ids", &need("img_ids")?, &[Some(x[1]), axes])?;
    expect_shape("txt_ids", &need("txt_ids")?, &[Some(context[1]), axes])?;
    match (c.guidance_embeds, shape("guidance")) {
        (true, Some(g)) => expect_shape("guidance", &g, &[b])?,
        (true, None) => bail!("guidance: missing; this FLUX transformer embeds a guidance scale (guidance_embeds)"),
        (false, _) => {}
    }
    Ok(())
}

/// A float input with a NaN or an infinity would flow through silently.
pub fn check_finite(name: &str, values: &[f32]) -> Result<()> {
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        bail!("{name}: element {i} is {v} (inputs must be finite)");
    }
    Ok(())
}
