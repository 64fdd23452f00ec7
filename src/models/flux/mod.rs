//! FLUX.1's denoiser, diffusers' `FluxTransformer2DModel`, in diffusers' tensor names:
//! packed 2×2 latent patches and projected T5 states run through double-stream blocks
//! (SD3's joint block with rotary positions) and then single-stream blocks over the joint
//! sequence, modulated by the timestep + pooled-CLIP (+ embedded guidance, [dev]) vector;
//! an AdaLN output layer gives the flow-matching velocity of each packed token.
//!
//! Two ways in: [`FluxTransformer2DModel::forward`] takes diffusers' own inputs (packed
//! tokens, σ, explicit ids), and the [`crate::models::denoiser::Denoiser`] impl takes
//! unpacked latents [B, C, H, W] at the model time σ·1000 like every other family, packing
//! and making the ids as `FluxPipeline` does. The training objective's per-row mean over
//! (C, H, W) is the same on either layout (packing is a permutation).

pub mod block;
pub mod checkpoint;
pub mod config;
pub mod pack;

use std::path::Path;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};

use self::block::SingleTransformerBlock;
pub use self::config::FluxTransformerConfig;
use super::lora::LoraConfig;
use super::nn::Linear;
use super::rope::{Rope, THETA};
use super::sd3::JointTransformerBlock;
use super::sd3::block::AdaNormContinuous;
use super::sd3::embed::TimeTextEmbed;
use super::weights::Weights;

#[derive(Module, Debug)]
pub struct FluxTransformer2DModel {
    pub x_embedder: Linear,
    pub time_text_embed: TimeTextEmbed,
    pub context_embedder: Linear,
    pub transformer_blocks: Vec<JointTransformerBlock>,
    pub single_transformer_blocks: Vec<SingleTransformerBlock>,
    pub norm_out: AdaNormContinuous,
    pub proj_out: Linear,
    axes: [usize; 3],
    latent_channels: usize,
}

/// What every block reads besides the token streams: the conditioning vector and the
/// rotary tables of the joint sequence (image tokens, then text).
pub struct Shared {
    pub temb: Tensor<2>,
    pub rope: Rope,
}

impl FluxTransformer2DModel {
    pub fn load(c: &FluxTransformerConfig, w: &Weights) -> Result<Self> {
        c.validate()?;
        let d = c.inner_dim();
        let heads = c.num_attention_heads;
        let blocks = w.pp("transformer_blocks");
        let singles = w.pp("single_transformer_blocks");
        Ok(Self {
            x_embedder: Linear::load(&w.pp("x_embedder"), c.in_channels, d, true),
            time_text_embed: TimeTextEmbed::load_with_guidance(
                &w.pp("time_text_embed"),
                d,
                c.pooled_projection_dim,
                c.guidance_embeds,
            ),
            context_embedder: Linear::load(&w.pp("context_embedder"), c.joint_attention_dim, d, true),
            transformer_blocks: (0..c.num_layers)
                .map(|i| JointTransformerBlock::load(&blocks.pp(i), d, heads, true, false, false))
                .collect(),
            single_transformer_blocks: (0..c.num_single_layers)
                .map(|i| SingleTransformerBlock::load(&singles.pp(i), d, heads))
                .collect(),
            norm_out: AdaNormContinuous::load(&w.pp("norm_out"), d),
            proj_out: Linear::load(&w.pp("proj_out"), d, c.out_channels(), true),
            axes: [c.axes_dims_rope[0], c.axes_dims_rope[1], c.axes_dims_rope[2]],
            latent_channels: c.latent_channels(),
        })
    }

    /// Loads a diffusers `transformer/` folder (`config.json` + weights, single or sharded).
    pub fn from_dir(dir: &Path, device: &Device, dtype: DType) -> Result<(Self, FluxTransformerConfig)> {
        Self::from_dir_with_lora(dir, device, dtype, None, None)
    }

    /// [`Self::from_dir`] with LoRA adapters on the layers `lora` targets (base frozen):
    /// from `adapters` (a LoRA checkpoint's file) when given, else fresh.
    pub fn from_dir_with_lora(
        dir: &Path,
        device: &Device,
        dtype: DType,
        lora: Option<LoraConfig>,
        adapters: Option<&Path>,
    ) -> Result<(Self, FluxTransformerConfig)> {
        let build = |c: &FluxTransformerConfig, w: &Weights| Self::load(c, w);
        Weights::load_dir_with_lora(dir, &["diffusion_pytorch_model"], device, dtype, lora, adapters, build)
    }

    /// Whether the model embeds a guidance scale (FLUX.1 [dev]).
    pub fn guidance_embeds(&self) -> bool {
        self.time_text_embed.guidance_embedder.is_some()
    }

    /// Channels of the unpacked latents (16 for FLUX.1).
    pub fn latent_channels(&self) -> usize {
        self.latent_channels
    }

    /// diffusers' forward: packed tokens [B, N, in_channels], `timestep` σ [B] in [0, 1],
    /// text states [B, L, joint_attention_dim], pooled CLIP [B, P], ids [N, 3] and [L, 3]
    /// (row-major f32), `guidance` [B] (the raw scale; [dev] only) → [B, N, out_channels].
    /// The model multiplies σ and the guidance by 1000 in the activations' dtype, as diffusers does.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: Tensor<3>,
        timestep: Tensor<1>,
        context: Tensor<3>,
        pooled: Tensor<2>,
        img_ids: &[f32],
        txt_ids: &[f32],
        guidance: Option<Tensor<1>>,
    ) -> Tensor<3> {
        let n = x.dims()[1];
        let (tokens, context, shared) = self.embed(x, timestep, context, pooled, img_ids, txt_ids, guidance);
        let (tokens, context) = self.double_stream(tokens, context, &shared);
        let joint = self.single_stream(Tensor::cat(vec![tokens, context], 1), &shared);
        self.head(joint.narrow(1, 0, n), &shared)
    }

    /// The inputs as the blocks take them, in the tokens' dtype.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn embed(
        &self,
        x: Tensor<3>,
        timestep: Tensor<1>,
        context: Tensor<3>,
        pooled: Tensor<2>,
        img_ids: &[f32],
        txt_ids: &[f32],
        guidance: Option<Tensor<1>>,
    ) -> (Tensor<3>, Tensor<3>, Shared) {
        let dtype = x.dtype();
        let device = x.device();
        let tokens = self.x_embedder.forward(x);
        let thousand = |t: Tensor<1>| t.cast(dtype).mul_scalar(1000.0);
        let guidance = guidance.map(thousand);
        let temb = self.time_text_embed.forward_guided(thousand(timestep), guidance, pooled.cast(dtype));
        let context = self.context_embedder.forward(context.cast(dtype));
        let rope =
            Rope::cat(&Rope::new(img_ids, &self.axes, THETA, &device), &Rope::new(txt_ids, &self.axes, THETA, &device));
        (tokens, context, Shared { temb, rope })
    }

    pub(crate) fn double_stream(
        &self,
        mut tokens: Tensor<3>,
        mut context: Tensor<3>,
        s: &Shared,
    ) -> (Tensor<3>, Tensor<3>) {
        for block in &self.transformer_blocks {
            let (c, x) = block.forward_rope(tokens, context, &s.temb, Some(&s.rope));
            context = c.expect("FLUX's double-stream blocks keep the text stream");
            tokens = x;
        }
        (tokens, context)
    }

    pub(crate) fn single_stream(&self, mut joint: Tensor<3>, s: &Shared) -> Tensor<3> {
        for block in &self.single_transformer_blocks {
            joint = block.forward(joint, &s.temb, &s.rope);
        }
        joint
    }

    /// The output layer on the image tokens.
    pub(crate) fn head(&self, tokens: Tensor<3>, s: &Shared) -> Tensor<3> {
        self.proj_out.forward(self.norm_out.forward(tokens, &s.temb))
    }

    /// The prediction for unpacked latents [B, C, H, W] at the model time `t` = σ·1000 [B]:
    /// packed, ids as the pipeline makes them (`txt_len` text tokens), the transformer
    /// called with t/1000 as `FluxPipeline` calls it, and the output unpacked.
    pub fn forward_latents(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        context: Tensor<3>,
        pooled: Tensor<2>,
        guidance: Option<Tensor<1>>,
    ) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        let (img, txt) = pack::ids(h, w, context.dims()[1]);
        let out = self.forward(pack::pack(x), t.div_scalar(1000.0), context, pooled, &img, &txt, guidance);
        pack::unpack(out, h, w)
    }
}
