//! SD3 / SD3.5's denoiser, diffusers' `SD3Transformer2DModel` (MMDiT), in diffusers' tensor
//! names: latent patches and projected text tokens run through joint blocks modulated by
//! the timestep + pooled-text vector, then an AdaLN output layer and unpatchify. The
//! prediction is a flow-matching velocity.

pub mod block;
pub mod checkpoint;
pub mod config;
pub mod embed;

use std::path::Path;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::{DType, Device, Tensor};

use self::block::AdaNormContinuous;
pub use self::block::JointTransformerBlock;
pub use self::config::SD3TransformerConfig;
use self::embed::{PatchEmbed, TimeTextEmbed};
use super::lora::LoraConfig;
use super::nn::Linear;
use super::weights::Weights;

/// Tensors of the folder that are not trained (diffusers' persistent buffers).
pub const BUFFERS: [&str; 1] = ["pos_embed.pos_embed"];

#[derive(Module, Debug)]
pub struct SD3Transformer2DModel {
    pub pos_embed: PatchEmbed,
    pub time_text_embed: TimeTextEmbed,
    pub context_embedder: Linear,
    pub transformer_blocks: Vec<JointTransformerBlock>,
    pub norm_out: AdaNormContinuous,
    pub proj_out: Linear,
    patch: usize,
    out_channels: usize,
}

impl SD3Transformer2DModel {
    pub fn load(c: &SD3TransformerConfig, w: &Weights) -> Result<Self> {
        c.validate()?;
        let d = c.inner_dim();
        let blocks = w.pp("transformer_blocks");
        Ok(Self {
            pos_embed: PatchEmbed::load(
                &w.pp("pos_embed"),
                c.in_channels,
                d,
                c.patch_size,
                c.pos_embed_max_size,
                c.sample_size / c.patch_size,
            ),
            time_text_embed: TimeTextEmbed::load(&w.pp("time_text_embed"), d, c.pooled_projection_dim),
            context_embedder: Linear::load(&w.pp("context_embedder"), c.joint_attention_dim, d, true),
            transformer_blocks: (0..c.num_layers)
                .map(|i| {
                    JointTransformerBlock::load(
                        &blocks.pp(i),
                        d,
                        c.num_attention_heads,
                        c.uses_qk_norm(),
                        i + 1 == c.num_layers,
                        c.dual_attention_layers.contains(&i),
                    )
                })
                .collect(),
            norm_out: AdaNormContinuous::load(&w.pp("norm_out"), d),
            proj_out: Linear::load(&w.pp("proj_out"), d, c.patch_size * c.patch_size * c.out_channels(), true),
            patch: c.patch_size,
            out_channels: c.out_channels(),
        })
    }

    /// Loads a diffusers `transformer/` folder (`config.json` + weights, single or sharded).
    pub fn from_dir(dir: &Path, device: &Device, dtype: DType) -> Result<(Self, SD3TransformerConfig)> {
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
    ) -> Result<(Self, SD3TransformerConfig)> {
        let build = |c: &SD3TransformerConfig, w: &Weights| Self::load(c, w);
        Weights::load_dir_with_lora(dir, &["diffusion_pytorch_model"], device, dtype, lora, adapters, build)
    }

    /// Refuses latents this model cannot take (not a multiple of the patch, larger than the
    /// position table).
    pub fn check_latents(&self, h: usize, w: usize) -> Result<()> {
        self.pos_embed.check(h, w)
    }

    /// The velocity for latents [B, C, H, W] at `timestep` [B] (σ·1000), text states
    /// [B, L, joint_attention_dim] and pooled text [B, pooled_projection_dim]. Activations
    /// run in the latents' dtype.
    pub fn forward(&self, x: Tensor<4>, timestep: Tensor<1>, context: Tensor<3>, pooled: Tensor<2>) -> Tensor<4> {
        let [b, _, h, w] = x.dims();
        let (mut tokens, context, temb) = self.embed(x, timestep, context, pooled);
        let mut context = Some(context);
        for block in &self.transformer_blocks {
            let c = context.take().expect("only the last block ends the text stream");
            let (c, x) = block.forward(tokens, c, &temb);
            context = c;
            tokens = x;
        }
        self.head(tokens, &temb, [b, h, w])
    }

    /// The inputs as the blocks take them: image tokens with positions, projected text
    /// states, and the timestep + pooled-text vector, in the latents' dtype.
    fn embed(
        &self,
        x: Tensor<4>,
        timestep: Tensor<1>,
        context: Tensor<3>,
        pooled: Tensor<2>,
    ) -> (Tensor<3>, Tensor<3>, Tensor<2>) {
        let dtype = x.dtype();
        let tokens = self.pos_embed.forward(x);
        let temb = self.time_text_embed.forward(timestep, pooled.cast(dtype));
        (tokens, self.context_embedder.forward(context.cast(dtype)), temb)
    }

    /// The output layer: AdaLN, projection and unpatchify to [B, C, H, W] (`bhw`).
    fn head(&self, tokens: Tensor<3>, temb: &Tensor<2>, [b, h, w]: [usize; 3]) -> Tensor<4> {
        let out = self.proj_out.forward(self.norm_out.forward(tokens, temb));
        self.unpatchify(out, b, h, w)
    }

    /// [B, (H/p)·(W/p), p·p·C] → [B, C, H, W] (einsum "nhwpqc->nchpwq").
    fn unpatchify(&self, x: Tensor<3>, b: usize, h: usize, w: usize) -> Tensor<4> {
        let p = self.patch;
        let c = self.out_channels;
        x.reshape([b, h / p, w / p, p, p, c]).permute([0, 5, 1, 3, 2, 4]).reshape([b, c, h, w])
    }
}
