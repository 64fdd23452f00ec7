//! SD3's input embeddings: latent patches with a cropped 2-D sin-cos position table
//! (`PatchEmbed` with `pos_embed_max_size`), and the timestep + pooled-text conditioning
//! vector (`CombinedTimestepTextProjEmbeddings`).

use anyhow::{Result, ensure};
use burn::module::{Module, Param};
use burn::tensor::{DType, Int, Tensor, TensorData};

use crate::models::nn::{Conv2d, Linear, silu};
use crate::models::unet::embeddings::{TimestepEmbedding, timestep_embedding};
use crate::models::weights::{Init, Weights};

/// diffusers' `get_2d_sincos_pos_embed(dim, grid, base_size)` as [grid·grid, dim] f32, row
/// major over (row, column): the first half of each vector encodes the column, the second
/// the row. Positions are f32 (`arange / (grid / base)`), frequencies and sin/cos f64, as
/// torch computes them.
pub fn sincos_table(dim: usize, grid: usize, base_size: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let step = (grid as f64 / base_size as f64) as f32;
    let omega: Vec<f64> = (0..quarter).map(|i| 1.0 / 10000f64.powf(i as f64 / quarter as f64)).collect();
    let mut out = Vec::with_capacity(grid * grid * dim);
    for row in 0..grid {
        for col in 0..grid {
            for pos in [col, row] {
                let p = ((pos as f32) / step) as f64;
                out.extend(omega.iter().map(|w| (p * w).sin() as f32));
                out.extend(omega.iter().map(|w| (p * w).cos() as f32));
            }
        }
    }
    out
}

/// Latents of `h`×`w` must be whole `patch`×`patch` patches, at most `max_size` a side (the
/// position table's, `pos_embed_max_size`).
pub fn check_patches(h: usize, w: usize, patch: usize, max_size: usize) -> Result<()> {
    let p = patch;
    ensure!(h.is_multiple_of(p) && w.is_multiple_of(p), "latents {h}×{w} are not a multiple of the patch size {p}");
    ensure!(
        h / p <= max_size && w / p <= max_size,
        "latents {h}×{w} are {}×{} patches; the position table holds at most {max_size}×{max_size} (pos_embed_max_size)",
        h / p,
        w / p
    );
    Ok(())
}

#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
    /// [1, max·max, D], frozen: a buffer in diffusers, saved with the weights (so exported
    /// folders load there), never trained.
    pub pos_embed: Param<Tensor<3>>,
    patch: usize,
    max_size: usize,
}

impl PatchEmbed {
    /// The position table comes from the file when it has one (diffusers saves it), else
    /// it is computed as diffusers computes it; it is held in the weights' dtype, as
    /// diffusers' `from_pretrained(torch_dtype=...)` casts it (SD3.5 Medium's is 384² × 1536:
    /// 906 MB in f32).
    pub fn load(w: &Weights, in_channels: usize, dim: usize, patch: usize, max_size: usize, base: usize) -> Self {
        let shape = [1, max_size * max_size, dim];
        let pos_embed = if w.contains("pos_embed") {
            w.tensor("pos_embed", shape, Init::Zeros)
        } else if w.placeholders() {
            Tensor::zeros([1, 1, 1], (w.device(), w.dtype()))
        } else {
            let data = TensorData::new(sincos_table(dim, max_size, base), shape);
            Tensor::<3>::from_data(data, (w.device(), DType::F32)).cast(w.dtype())
        };
        Self {
            proj: Conv2d::load(&w.pp("proj"), in_channels, dim, patch, patch, 0),
            pos_embed: Param::from_tensor(pos_embed).set_require_grad(false),
            patch,
            max_size,
        }
    }

    /// Refuses latents the position table cannot place.
    pub fn check(&self, h: usize, w: usize) -> Result<()> {
        check_patches(h, w, self.patch, self.max_size)
    }

    /// [B, C, H, W] latents → [B, (H/p)·(W/p), D] tokens with their positions added.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<3> {
        let [_, _, h, w] = x.dims();
        let (gh, gw) = (h / self.patch, w / self.patch);
        let dtype = x.dtype();
        let patches = self.proj.forward(x);
        let [b, d, _, _] = patches.dims();
        let tokens = patches.reshape([b, d, gh * gw]).swap_dims(1, 2);
        // The centre crop of the table (`cropped_pos_embed`), rows top.., columns left...
        let (top, left) = ((self.max_size - gh) / 2, (self.max_size - gw) / 2);
        let ids: Vec<i64> =
            (0..gh).flat_map(|r| (0..gw).map(move |c| ((top + r) * self.max_size + left + c) as i64)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [gh * gw]), &tokens.device());
        let pos = self.pos_embed.val().select(1, ids);
        tokens + pos.cast(dtype)
    }
}

/// `PixArtAlphaTextProjection` with SiLU: the pooled text embedding's MLP.
#[derive(Module, Debug)]
pub struct TextProjection {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

/// `CombinedTimestepTextProjEmbeddings`: MLP(sinusoid(t)) + MLP(pooled); with a
/// `guidance_embedder` (FLUX.1-dev's `CombinedTimestepGuidanceTextProjEmbeddings`) the
/// embedded guidance scale's MLP(sinusoid(g)) is added too.
#[derive(Module, Debug)]
pub struct TimeTextEmbed {
    pub timestep_embedder: TimestepEmbedding,
    pub guidance_embedder: Option<TimestepEmbedding>,
    pub text_embedder: TextProjection,
}

impl TimeTextEmbed {
    pub fn load(w: &Weights, dim: usize, pooled_dim: usize) -> Self {
        Self::load_with_guidance(w, dim, pooled_dim, false)
    }

    pub fn load_with_guidance(w: &Weights, dim: usize, pooled_dim: usize, guidance: bool) -> Self {
        let t = w.pp("text_embedder");
        Self {
            timestep_embedder: TimestepEmbedding::load(&w.pp("timestep_embedder"), 256, dim),
            guidance_embedder: guidance.then(|| TimestepEmbedding::load(&w.pp("guidance_embedder"), 256, dim)),
            text_embedder: TextProjection {
                linear_1: Linear::load(&t.pp("linear_1"), pooled_dim, dim, true),
                linear_2: Linear::load(&t.pp("linear_2"), dim, dim, true),
            },
        }
    }

    /// `timestep` [B] (the model's time: σ·1000), `pooled` [B, P] → [B, D] in the pooled dtype.
    pub fn forward(&self, timestep: Tensor<1>, pooled: Tensor<2>) -> Tensor<2> {
        self.forward_guided(timestep, None, pooled)
    }

    /// [`Self::forward`] with the embedded guidance scale [B] (already ×1000) when the
    /// model has a guidance embedder.
    pub fn forward_guided(&self, timestep: Tensor<1>, guidance: Option<Tensor<1>>, pooled: Tensor<2>) -> Tensor<2> {
        let dtype = pooled.dtype();
        let sinusoid = |t: Tensor<1>| timestep_embedding(t, 256, true, 0.0).cast(dtype);
        let mut t = self.timestep_embedder.forward(sinusoid(timestep));
        if let (Some(embedder), Some(g)) = (&self.guidance_embedder, guidance) {
            t = t + embedder.forward(sinusoid(g));
        }
        let p = self.text_embedder.linear_2.forward(silu(self.text_embedder.linear_1.forward(pooled)));
        t + p
    }
}
