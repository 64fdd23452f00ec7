//! The VAE's encoder and decoder towers.

use burn::module::Module;
use burn::tensor::Tensor;

use super::config::VaeConfig;
use super::mid::VaeMidBlock;
use crate::models::nn::{Conv2d, GroupNorm, silu};
use crate::models::resnet::ResnetBlock2D;
use crate::models::sampling::{Downsample2D, Upsample2D};
use crate::models::weights::Weights;

const EPS: f64 = 1e-6;

#[derive(Module, Debug)]
pub struct DownEncoderBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsamplers: Vec<Downsample2D>,
}

#[derive(Module, Debug)]
pub struct UpDecoderBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsamplers: Vec<Upsample2D>,
}

fn resnets(w: &Weights, layers: usize, c_in: usize, c_out: usize, groups: usize) -> Vec<ResnetBlock2D> {
    let r = w.pp("resnets");
    (0..layers)
        .map(|j| ResnetBlock2D::load(&r.pp(j), if j == 0 { c_in } else { c_out }, c_out, None, groups, EPS))
        .collect()
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownEncoderBlock>,
    pub mid_block: VaeMidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    pub fn load(w: &Weights, cfg: &VaeConfig) -> Self {
        let ch = &cfg.block_out_channels;
        let (n, g) = (ch.len(), cfg.norm_num_groups);
        let down = w.pp("down_blocks");
        Self {
            conv_in: Conv2d::load(&w.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1),
            down_blocks: (0..n)
                .map(|i| {
                    let b = down.pp(i);
                    let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                    DownEncoderBlock {
                        resnets: resnets(&b, cfg.layers_per_block, c_in, ch[i], g),
                        downsamplers: if i + 1 < n {
                            vec![Downsample2D::load(&b.pp("downsamplers").pp(0), ch[i], 0)]
                        } else {
                            vec![]
                        },
                    }
                })
                .collect(),
            mid_block: VaeMidBlock::load(&w.pp("mid_block"), ch[n - 1], g, cfg.mid_block_add_attention),
            conv_norm_out: GroupNorm::load(&w.pp("conv_norm_out"), g, ch[n - 1], EPS),
            conv_out: Conv2d::load(&w.pp("conv_out"), ch[n - 1], 2 * cfg.latent_channels, 3, 1, 1),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.conv_in.forward(x);
        for block in &self.down_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            for d in &block.downsamplers {
                x = d.forward(x);
            }
        }
        let x = self.mid_block.forward(x);
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}

#[derive(Module, Debug)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: VaeMidBlock,
    pub up_blocks: Vec<UpDecoderBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    pub fn load(w: &Weights, cfg: &VaeConfig) -> Self {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let (n, g) = (rev.len(), cfg.norm_num_groups);
        let up = w.pp("up_blocks");
        Self {
            conv_in: Conv2d::load(&w.pp("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1),
            mid_block: VaeMidBlock::load(&w.pp("mid_block"), rev[0], g, cfg.mid_block_add_attention),
            up_blocks: (0..n)
                .map(|i| {
                    let b = up.pp(i);
                    let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
                    UpDecoderBlock {
                        resnets: resnets(&b, cfg.layers_per_block + 1, c_in, rev[i], g),
                        upsamplers: if i + 1 < n {
                            vec![Upsample2D::load(&b.pp("upsamplers").pp(0), rev[i])]
                        } else {
                            vec![]
                        },
                    }
                })
                .collect(),
            conv_norm_out: GroupNorm::load(&w.pp("conv_norm_out"), g, rev[n - 1], EPS),
            conv_out: Conv2d::load(&w.pp("conv_out"), rev[n - 1], cfg.out_channels, 3, 1, 1),
        }
    }

    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut x = self.mid_block.forward(self.conv_in.forward(z));
        for block in &self.up_blocks {
            for r in &block.resnets {
                x = r.forward(x, None);
            }
            for u in &block.upsamplers {
                x = u.forward(x, None);
            }
        }
        self.conv_out.forward(silu(self.conv_norm_out.forward(x)))
    }
}
