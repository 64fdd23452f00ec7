//! Layers whose parameters are named and shaped exactly as in PyTorch (`weight`, `bias`;
//! `Linear.weight` is `[out, in]`), so that loading and saving need no remapping.

use burn::module::{Module, Param};
use burn::tensor::activation;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor};

use super::lora::Lora;
use super::weights::{Init, Weights};

/// A parameter in the dtype of the activations it meets. With f32 master weights and bf16
/// activations this is autocast: the matmul runs in bf16 while the gradient flows back
/// through the cast into the f32 parameter, so small updates are not rounded away.
pub(crate) fn like<const D: usize>(p: &Param<Tensor<D>>, dtype: DType) -> Tensor<D> {
    let v = p.val();
    if v.dtype() == dtype { v } else { v.cast(dtype) }
}

#[derive(Module, Debug)]
pub struct Linear {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    /// A low-rank adapter, on the layers a LoRA run targets.
    pub lora: Option<Lora>,
}

impl Linear {
    pub fn load(w: &Weights, d_in: usize, d_out: usize, bias: bool) -> Self {
        Self {
            weight: w.param("weight", [d_out, d_in], Init::FanIn(d_in)),
            bias: bias.then(|| w.param("bias", [d_out], Init::Zeros)),
            lora: w.lora_here().map(|c| Lora::load(&w.pp("lora"), d_in, d_out, c)),
        }
    }

    /// Like `load`, accepting an older key spelling of the same layer (e.g. VAE `query`).
    pub fn load_any(parent: &Weights, names: &[&str], d_in: usize, d_out: usize, bias: bool) -> Self {
        let weight_keys: Vec<String> = names.iter().map(|n| format!("{n}.weight")).collect();
        let bias_keys: Vec<String> = names.iter().map(|n| format!("{n}.bias")).collect();
        let weight_refs: Vec<&str> = weight_keys.iter().map(String::as_str).collect();
        let bias_refs: Vec<&str> = bias_keys.iter().map(String::as_str).collect();
        Self {
            weight: Param::from_tensor(parent.tensor_any(&weight_refs, [d_out, d_in], Init::FanIn(d_in))),
            bias: bias.then(|| Param::from_tensor(parent.tensor_any(&bias_refs, [d_out], Init::Zeros))),
            lora: None,
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let base = burn::tensor::module::linear(
            x.clone(),
            like(&self.weight, dtype).transpose(),
            self.bias.as_ref().map(|b| like(b, dtype)),
        );
        match &self.lora {
            Some(lora) => base + lora.forward(x),
            None => base,
        }
    }
}

#[derive(Module, Debug)]
pub struct Conv2d {
    pub weight: Param<Tensor<4>>,
    pub bias: Option<Param<Tensor<1>>>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    pub fn load(w: &Weights, c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize) -> Self {
        let fan_in = c_in * kernel * kernel;
        Self {
            weight: w.param("weight", [c_out, c_in, kernel, kernel], Init::FanIn(fan_in)),
            bias: Some(w.param("bias", [c_out], Init::Zeros)),
            stride,
            padding,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let options = ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        let dtype = x.dtype();
        conv2d(x, like(&self.weight, dtype), self.bias.as_ref().map(|b| like(b, dtype)), options)
    }
}

/// Statistics are computed in f32 whatever the activation dtype: bf16 sums of squares over
/// 1280 channels × 16k positions lose most of their bits.
fn normalize<const D: usize>(x: Tensor<D>, dim: usize, eps: f64) -> Tensor<D> {
    let dtype = x.dtype();
    let x = if dtype == DType::F32 { x } else { x.cast(DType::F32) };
    let mean = x.clone().mean_dim(dim);
    let centered = x.sub(mean);
    let var = centered.clone().square().mean_dim(dim);
    let y = centered.div(var.add_scalar(eps).sqrt());
    if dtype == DType::F32 { y } else { y.cast(dtype) }
}

#[derive(Module, Debug)]
pub struct GroupNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn load(w: &Weights, groups: usize, channels: usize, eps: f64) -> Self {
        Self {
            weight: w.param("weight", [channels], Init::Ones),
            bias: w.param("bias", [channels], Init::Zeros),
            groups,
            eps,
        }
    }

    /// `x`: [B, C, ...spatial] (rank 3 or 4).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let (b, c) = (dims[0], dims[1]);
        let grouped: Tensor<3> = x.reshape([b as i64, self.groups as i64, -1]);
        let y = normalize(grouped, 2, self.eps).reshape(dims);
        let mut affine = [1usize; D];
        affine[1] = c;
        let dtype = y.dtype();
        y.mul(like(&self.weight, dtype).reshape(affine)).add(like(&self.bias, dtype).reshape(affine))
    }
}

#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    eps: f64,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Self {
        Self { weight: w.param("weight", [dim], Init::Ones), bias: w.param("bias", [dim], Init::Zeros), eps }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = normalize(x, D - 1, self.eps);
        let dim = self.weight.dims()[0];
        let mut affine = [1usize; D];
        affine[D - 1] = dim;
        let dtype = y.dtype();
        y.mul(like(&self.weight, dtype).reshape(affine)).add(like(&self.bias, dtype).reshape(affine))
    }
}

/// A layer norm without affine parameters (`elementwise_affine=False`), statistics in f32.
pub fn layer_norm_plain<const D: usize>(x: Tensor<D>, eps: f64) -> Tensor<D> {
    normalize(x, D - 1, eps)
}

/// An RMS norm over the last dimension (diffusers' `RMSNorm`, T5's layer norm): x / √(mean(x²) + ε) · w,
/// in f32, returned in the input's dtype.
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: &Param<Tensor<1>>, eps: f64) -> Tensor<D> {
    let dtype = x.dtype();
    let x = if dtype == DType::F32 { x } else { x.cast(DType::F32) };
    let variance = x.clone().square().mean_dim(D - 1);
    let y = x.div(variance.add_scalar(eps).sqrt());
    let dim = weight.dims()[0];
    let mut shape = [1usize; D];
    shape[D - 1] = dim;
    let y = y.mul(like(weight, DType::F32).reshape(shape));
    if dtype == DType::F32 { y } else { y.cast(dtype) }
}

/// [`rms_norm`] with its weight (diffusers' `RMSNorm` with `elementwise_affine`, T5's layer norm).
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    eps: f64,
}

impl RmsNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Self {
        Self { weight: w.param("weight", [dim], Init::Ones), eps }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        rms_norm(x, &self.weight, self.eps)
    }
}

/// GELU's tanh approximation (`gelu(approximate="tanh")`, transformers' `gelu_new`).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube.mul_scalar(0.044715)).mul_scalar(c);
    x.mul_scalar(0.5) * inner.tanh().add_scalar(1.0)
}

pub fn silu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    activation::silu(x)
}

/// Nearest-neighbour resize of [B, C, H, W] to `size`, with PyTorch's `mode="nearest"`
/// index rule (`src = floor(dst * in / out)`). The exact ×2 case, the common one, is a
/// broadcast copy.
pub fn upsample_nearest(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    if size == [2 * h, 2 * w] {
        return x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w]);
    }
    let device = x.device();
    let index = |n_in: usize, n_out: usize| {
        let scale = n_in as f32 / n_out as f32;
        let idx: Vec<i64> = (0..n_out).map(|i| ((i as f32 * scale).floor() as usize).min(n_in - 1) as i64).collect();
        Tensor::<1, burn::tensor::Int>::from_data(burn::tensor::TensorData::new(idx, [n_out]), &device)
    };
    x.select(2, index(h, size[0])).select(3, index(w, size[1]))
}
