//! SDXL's `UNet2DConditionModel`, built from a diffusers `unet/config.json`.

pub mod blocks;
pub mod checkpoint;
pub mod config;
pub mod embeddings;
pub mod inputs;
pub mod transformer;

use std::path::Path;

use anyhow::Result;
use burn::module::Module;
use burn::tensor::{DType, Device, Int, Tensor};

use self::blocks::{BlockCtx, DownBlock, MidBlock, UpBlock};
pub use self::config::UNetConfig;
use self::embeddings::{TimestepEmbedding, timestep_embedding};
use crate::models::nn::{Conv2d, GroupNorm, silu};
use crate::models::weights::Weights;

#[derive(Module, Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: Conv2d,
    pub time_embedding: TimestepEmbedding,
    pub add_embedding: Option<TimestepEmbedding>,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
    time_proj_dim: usize,
    add_time_proj_dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
}

/// SDXL's extra conditioning (`added_cond_kwargs`).
#[derive(Debug, Clone)]
pub struct TextTime {
    /// Pooled, projected text embedding of the second text encoder: [B, P].
    pub text_embeds: Tensor<2>,
    /// `[orig_h, orig_w, crop_top, crop_left, target_h, target_w]` per sample: [B, 6].
    pub time_ids: Tensor<2>,
}

impl TextTime {
    /// The text embedding in the activations' dtype (the time ids stay f32: they go through
    /// the sinusoidal embedding first).
    pub fn cast(&self, dtype: DType) -> Self {
        Self { text_embeds: self.text_embeds.clone().cast(dtype), time_ids: self.time_ids.clone() }
    }
}

impl UNet2DConditionModel {
    pub fn load(config: &UNetConfig, w: &Weights) -> Result<Self> {
        config.validate()?;
        let ch = &config.block_out_channels;
        let n = ch.len();
        let temb = config.time_embed_dim();
        let ctx = BlockCtx {
            temb,
            context_dim: config.cross_attention_dim,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
        };
        let add_embedding = match config.addition_embed_type.as_deref() {
            Some("text_time") => Some(TimestepEmbedding::load(
                &w.pp("add_embedding"),
                config.projection_class_embeddings_input_dim.expect("validated"),
                temb,
            )),
            _ => None,
        };

        let down = w.pp("down_blocks");
        let down_plans = config.down_plans()?;
        let down_blocks = (0..n)
            .map(|i| {
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                DownBlock::load(&down.pp(i), &down_plans[i], c_in, ch[i], i + 1 < n, ctx)
            })
            .collect();

        let mid_block = MidBlock::load(&w.pp("mid_block"), &config.mid_plan()?, ch[n - 1], ctx);

        let up = w.pp("up_blocks");
        let up_plans = config.up_plans()?;
        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let up_blocks = (0..n)
            .map(|i| {
                let c_prev = if i == 0 { rev[0] } else { rev[i - 1] };
                let c_skip = rev[(i + 1).min(n - 1)];
                UpBlock::load(&up.pp(i), &up_plans[i], c_prev, rev[i], c_skip, i + 1 < n, ctx)
            })
            .collect();

        let (k_in, k_out) = (config.conv_in_kernel, config.conv_out_kernel);
        Ok(Self {
            conv_in: Conv2d::load(&w.pp("conv_in"), config.in_channels, ch[0], k_in, 1, k_in / 2),
            time_embedding: TimestepEmbedding::load(&w.pp("time_embedding"), ch[0], temb),
            add_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&w.pp("conv_norm_out"), config.norm_num_groups, ch[0], config.norm_eps),
            conv_out: Conv2d::load(&w.pp("conv_out"), ch[0], config.out_channels, k_out, 1, k_out / 2),
            time_proj_dim: ch[0],
            add_time_proj_dim: config.addition_time_embed_dim.unwrap_or(0),
            flip_sin_to_cos: config.flip_sin_to_cos,
            freq_shift: config.freq_shift,
        })
    }

    /// Loads `dir` (a diffusers `unet/` folder) onto `device` in `dtype`.
    pub fn from_dir(dir: &Path, device: &Device, dtype: DType) -> Result<(Self, UNetConfig)> {
        Self::from_dir_with_lora(dir, device, dtype, None, None)
    }

    /// Like [`Self::from_dir`], attaching LoRA adapters and freezing the base weights. The
    /// adapters come from `adapters` (a LoRA checkpoint's file), else from the folder when
    /// it has them, else fresh.
    pub fn from_dir_with_lora(
        dir: &Path,
        device: &Device,
        dtype: DType,
        lora: Option<crate::models::lora::LoraConfig>,
        adapters: Option<&Path>,
    ) -> Result<(Self, UNetConfig)> {
        let build = |c: &UNetConfig, w: &Weights| Self::load(c, w);
        Weights::load_dir_with_lora(dir, &["diffusion_pytorch_model"], device, dtype, lora, adapters, build)
    }

    /// The noise prediction for `sample` [B, C, h, w] at integer `timestep` [B] (training).
    pub fn forward(
        &self,
        sample: Tensor<4>,
        timestep: Tensor<1, Int>,
        context: Tensor<3>,
        cond: Option<&TextTime>,
    ) -> Tensor<4> {
        let t = timestep.float().cast(DType::F32);
        self.forward_at(sample, t, context, cond)
    }

    /// [`Self::forward`] at real-valued timesteps [B] (f32), as samplers with interpolated
    /// timesteps (e.g. Euler with "linspace" spacing) pass them.
    pub fn forward_at(
        &self,
        sample: Tensor<4>,
        timestep: Tensor<1>,
        context: Tensor<3>,
        cond: Option<&TextTime>,
    ) -> Tensor<4> {
        let emb = self.embedding(timestep, cond, sample.dtype());

        let mut x = self.conv_in.forward(sample);
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(x, &emb, &context, &mut skips);
        }
        x = self.mid_block.forward(x, &emb, &context);
        for block in &self.up_blocks {
            x = block.forward(x, &emb, &context, &mut skips);
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }

    /// The time embedding (with SDXL's text-time addition) every resnet receives, in `dtype`.
    pub fn embedding(&self, timestep: Tensor<1>, cond: Option<&TextTime>, dtype: DType) -> Tensor<2> {
        let t_emb = timestep_embedding(timestep, self.time_proj_dim, self.flip_sin_to_cos, self.freq_shift);
        let mut emb = self.time_embedding.forward(t_emb.cast(dtype));
        if let Some(add) = &self.add_embedding {
            let cond = cond.expect("this UNet has addition_embed_type text_time: pass text_embeds and time_ids");
            let b = cond.time_ids.dims()[0];
            let ids = cond.time_ids.clone().reshape([-1]);
            let time_embeds = timestep_embedding(ids, self.add_time_proj_dim, self.flip_sin_to_cos, self.freq_shift)
                .reshape([b as i64, -1]);
            let add_embeds = Tensor::cat(vec![cond.text_embeds.clone().cast(DType::F32), time_embeds], 1);
            emb = emb + add.forward(add_embeds.cast(dtype));
        }
        emb
    }
}
