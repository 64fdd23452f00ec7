//! diffusers' `Downsample2D` and `Upsample2D` (convolution variants).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::ops::PadMode;

use super::nn::{Conv2d, upsample_nearest};
use super::weights::Weights;

#[derive(Module, Debug)]
pub struct Downsample2D {
    pub conv: Conv2d,
    /// The VAE pads right/bottom by one and convolves without padding (`padding=0`).
    asymmetric_pad: bool,
}

impl Downsample2D {
    /// `padding`: diffusers' `downsample_padding` (1 in the UNet, 0 in the VAE).
    pub fn load(w: &Weights, channels: usize, padding: usize) -> Self {
        Self { conv: Conv2d::load(&w.pp("conv"), channels, channels, 3, 2, padding), asymmetric_pad: padding == 0 }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = if self.asymmetric_pad { x.pad([(0, 0), (0, 0), (0, 1), (0, 1)], PadMode::Constant(0.0)) } else { x };
        self.conv.forward(x)
    }
}

#[derive(Module, Debug)]
pub struct Upsample2D {
    pub conv: Conv2d,
}

impl Upsample2D {
    pub fn load(w: &Weights, channels: usize) -> Self {
        Self { conv: Conv2d::load(&w.pp("conv"), channels, channels, 3, 1, 1) }
    }

    /// Nearest upsampling to `size` (twice the input unless a skip connection of odd size
    /// asks otherwise, as diffusers' `upsample_size`), then a 3×3 convolution.
    pub fn forward(&self, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
        let [_, _, h, w] = x.dims();
        self.conv.forward(upsample_nearest(x, size.unwrap_or([2 * h, 2 * w])))
    }
}
