//! diffusers' `ResnetBlock2D` (shared by the UNet, with a time embedding, and the VAE, without).

use burn::module::Module;
use burn::tensor::Tensor;

use super::nn::{Conv2d, GroupNorm, Linear, silu};
use super::weights::Weights;

#[derive(Module, Debug)]
pub struct ResnetBlock2D {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub time_emb_proj: Option<Linear>,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    /// `temb_channels`: the time-embedding width (UNet), or `None` (VAE).
    pub fn load(w: &Weights, c_in: usize, c_out: usize, temb_channels: Option<usize>, groups: usize, eps: f64) -> Self {
        Self {
            norm1: GroupNorm::load(&w.pp("norm1"), groups, c_in, eps),
            conv1: Conv2d::load(&w.pp("conv1"), c_in, c_out, 3, 1, 1),
            time_emb_proj: temb_channels.map(|t| Linear::load(&w.pp("time_emb_proj"), t, c_out, true)),
            norm2: GroupNorm::load(&w.pp("norm2"), groups, c_out, eps),
            conv2: Conv2d::load(&w.pp("conv2"), c_out, c_out, 3, 1, 1),
            conv_shortcut: (c_in != c_out).then(|| Conv2d::load(&w.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)),
        }
    }

    /// `temb`: [B, T] (already the UNet's time embedding; SiLU is applied here as diffusers does).
    pub fn forward(&self, x: Tensor<4>, temb: Option<&Tensor<2>>) -> Tensor<4> {
        let mut h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t: Tensor<2> = proj.forward(silu(temb.clone()));
            h = h + t.unsqueeze_dims::<4>(&[2, 3]);
        }
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        shortcut + h
    }
}
