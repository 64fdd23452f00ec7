//! The UNet's down, mid and up blocks. One struct per role covers both the plain
//! (`DownBlock2D`, `UpBlock2D`) and cross-attention variants: the plain ones simply have no
//! `attentions`, exactly as their diffusers key trees do.

use burn::module::Module;
use burn::tensor::Tensor;

use super::config::BlockPlan;
use super::transformer::Transformer2DModel;
use crate::models::resnet::ResnetBlock2D;
use crate::models::sampling::{Downsample2D, Upsample2D};
use crate::models::weights::Weights;

/// Shared block settings resolved from the UNet config.
#[derive(Debug, Clone, Copy)]
pub struct BlockCtx {
    pub temb: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub eps: f64,
}

fn attentions(w: &Weights, plan: &BlockPlan, channels: usize, ctx: BlockCtx) -> Vec<Transformer2DModel> {
    if !plan.cross_attention {
        return Vec::new();
    }
    let a = w.pp("attentions");
    (0..plan.layers)
        .map(|j| {
            Transformer2DModel::load(
                &a.pp(j),
                channels,
                plan.transformer_layers[j],
                ctx.context_dim,
                plan.heads,
                ctx.groups,
            )
        })
        .collect()
}

#[derive(Module, Debug)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub downsamplers: Vec<Downsample2D>,
}

impl DownBlock {
    pub fn load(w: &Weights, plan: &BlockPlan, c_in: usize, c_out: usize, downsample: bool, ctx: BlockCtx) -> Self {
        let r = w.pp("resnets");
        Self {
            resnets: (0..plan.layers)
                .map(|j| {
                    let c = if j == 0 { c_in } else { c_out };
                    ResnetBlock2D::load(&r.pp(j), c, c_out, Some(ctx.temb), ctx.groups, ctx.eps)
                })
                .collect(),
            attentions: attentions(w, plan, c_out, ctx),
            downsamplers: if downsample {
                vec![Downsample2D::load(&w.pp("downsamplers").pp(0), c_out, 1)]
            } else {
                vec![]
            },
        }
    }

    /// Returns the output and pushes every intermediate state the up path will consume.
    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(x, context);
            }
            skips.push(x.clone());
        }
        for down in &self.downsamplers {
            x = down.forward(x);
            skips.push(x.clone());
        }
        x
    }
}

#[derive(Module, Debug)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl MidBlock {
    pub fn load(w: &Weights, plan: &BlockPlan, channels: usize, ctx: BlockCtx) -> Self {
        let r = w.pp("resnets");
        Self {
            resnets: (0..2)
                .map(|j| ResnetBlock2D::load(&r.pp(j), channels, channels, Some(ctx.temb), ctx.groups, ctx.eps))
                .collect(),
            attentions: attentions(w, plan, channels, ctx),
        }
    }

    pub fn forward(&self, x: Tensor<4>, temb: &Tensor<2>, context: &Tensor<3>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attn.forward(x, context), Some(temb));
        }
        x
    }
}

#[derive(Module, Debug)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
    pub upsamplers: Vec<Upsample2D>,
}

impl UpBlock {
    /// `c_prev`: channels coming from the block below; `c_skip_last`: channels of the skip
    /// connection consumed by the last resnet (the previous down block's output width).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        w: &Weights,
        plan: &BlockPlan,
        c_prev: usize,
        c_out: usize,
        c_skip_last: usize,
        upsample: bool,
        ctx: BlockCtx,
    ) -> Self {
        let r = w.pp("resnets");
        Self {
            resnets: (0..plan.layers)
                .map(|j| {
                    let skip = if j == plan.layers - 1 { c_skip_last } else { c_out };
                    let c = if j == 0 { c_prev } else { c_out };
                    ResnetBlock2D::load(&r.pp(j), c + skip, c_out, Some(ctx.temb), ctx.groups, ctx.eps)
                })
                .collect(),
            attentions: attentions(w, plan, c_out, ctx),
            upsamplers: if upsample { vec![Upsample2D::load(&w.pp("upsamplers").pp(0), c_out)] } else { vec![] },
        }
    }

    pub fn forward(
        &self,
        mut x: Tensor<4>,
        temb: &Tensor<2>,
        context: &Tensor<3>,
        skips: &mut Vec<Tensor<4>>,
    ) -> Tensor<4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().expect("one skip connection per up resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(x, context);
            }
        }
        for up in &self.upsamplers {
            // The next skip connection fixes the size (odd sizes do not double exactly).
            let size = skips.last().map(|s| {
                let [_, _, h, w] = s.dims();
                [h, w]
            });
            x = up.forward(x, size);
        }
        x
    }
}
