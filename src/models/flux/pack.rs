//! `FluxPipeline`'s latent packing: 2×2 patches of [B, C, H, W] latents become tokens of
//! 4C channels (channel c·4 + 2·dy + dx, token row·(W/2) + col), and the position ids of
//! image (0, row, col) and text (zeros) tokens.

use anyhow::{Result, ensure};
use burn::tensor::Tensor;

/// [B, C, H, W] → [B, (H/2)·(W/2), 4C] (`_pack_latents`).
pub fn pack(x: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / 2, 2, w / 2, 2]).permute([0, 2, 4, 1, 3, 5]).reshape([b, (h / 2) * (w / 2), c * 4])
}

/// [B, (H/2)·(W/2), 4C] → [B, C, H, W] (`_unpack_latents`).
pub fn unpack(x: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [b, _, c4] = x.dims();
    let c = c4 / 4;
    x.reshape([b, h / 2, w / 2, c, 2, 2]).permute([0, 3, 1, 4, 2, 5]).reshape([b, c, h, w])
}

/// Unpacked latents must be whole 2×2 patches.
pub fn check_latents(name: &str, h: usize, w: usize) -> Result<()> {
    ensure!(
        h.is_multiple_of(2) && w.is_multiple_of(2) && h > 0 && w > 0,
        "{name}: latents {h}×{w} must have even sides (FLUX packs 2×2 patches; images must be multiples of 16 pixels)"
    );
    Ok(())
}

/// `_prepare_latent_image_ids` for a packed grid of `rows`×`cols`: (0, row, col), row-major [N, 3].
pub fn image_ids(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows).flat_map(|r| (0..cols).flat_map(move |c| [0.0, r as f32, c as f32])).collect()
}

/// The pipeline's `text_ids`: zeros [L, 3].
pub fn text_ids(len: usize) -> Vec<f32> {
    vec![0.0; len * 3]
}

/// The ids of unpacked [_, _, `h`, `w`] latents' tokens and of `text_len` text tokens.
pub fn ids(h: usize, w: usize, text_len: usize) -> (Vec<f32>, Vec<f32>) {
    (image_ids(h / 2, w / 2), text_ids(text_len))
}
