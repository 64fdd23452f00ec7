//! Rotary position embedding over several id axes (FLUX's `FluxPosEmbed` with
//! `apply_rotary_emb(use_real=True, use_real_unbind_dim=-1)`): each token has one id per
//! axis (FLUX: 0, row, column for image tokens; zeros for text), each axis owns
//! `axes_dim[i]` of a head's channels, and channel pairs (2j, 2j+1) rotate by id·ω_j.

use burn::tensor::{DType, Device, Tensor, TensorData};

/// diffusers' `theta` for FLUX.
pub const THETA: f64 = 10000.0;

/// cos and sin tables [S, head_dim] (f32) of one token sequence.
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
}

impl Rope {
    /// The tables for `ids` (row-major [S, axes], f32 as the pipeline makes them). As
    /// diffusers computes them: ω = 1/θ^(2j/d) in f64, the f32 id times ω in f64, cos and
    /// sin in f64, each repeated for the pair, then rounded to f32.
    pub fn new(ids: &[f32], axes_dim: &[usize], theta: f64, device: &Device) -> Self {
        let n_axes = axes_dim.len();
        let head_dim: usize = axes_dim.iter().sum();
        let s = ids.len() / n_axes;
        let (mut cos, mut sin) = (Vec::with_capacity(s * head_dim), Vec::with_capacity(s * head_dim));
        for token in ids.chunks(n_axes) {
            for (&id, &d) in token.iter().zip(axes_dim) {
                for j in 0..d / 2 {
                    let omega = 1.0 / theta.powf((2 * j) as f64 / d as f64);
                    let angle = id as f64 * omega;
                    let (c, sn) = (angle.cos() as f32, angle.sin() as f32);
                    cos.extend([c, c]);
                    sin.extend([sn, sn]);
                }
            }
        }
        let table = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [s, head_dim]), (device, DType::F32));
        Self { cos: table(cos), sin: table(sin) }
    }

    /// The two tables of `a` followed by those of `b` (a sequence made of both).
    pub fn cat(a: &Rope, b: &Rope) -> Rope {
        Rope {
            cos: Tensor::cat(vec![a.cos.clone(), b.cos.clone()], 0),
            sin: Tensor::cat(vec![a.sin.clone(), b.sin.clone()], 0),
        }
    }

    /// Tokens in the table.
    pub fn len(&self) -> usize {
        self.cos.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tables on another device (e.g. the autodiff device of a checkpointed backward).
    pub fn to_device(&self, device: &Device) -> Rope {
        Rope { cos: self.cos.clone().to_device(device), sin: self.sin.clone().to_device(device) }
    }

    /// Rotates queries or keys [B, S, heads·head_dim]: x·cos + rot(x)·sin with
    /// rot(x)_{2j} = −x_{2j+1}, rot(x)_{2j+1} = x_{2j}, in f32, returned in x's dtype.
    pub fn apply(&self, x: Tensor<3>, heads: usize) -> Tensor<3> {
        let [b, s, inner] = x.dims();
        let d = inner / heads;
        let dtype = x.dtype();
        let x = if dtype == DType::F32 { x } else { x.cast(DType::F32) };
        let pairs = x.clone().reshape([b, s, heads, d / 2, 2]);
        let (re, im) = (pairs.clone().narrow(4, 0, 1), pairs.narrow(4, 1, 1));
        let rotated = Tensor::cat(vec![im.neg(), re], 4).reshape([b, s, heads, d]);
        let x = x.reshape([b, s, heads, d]);
        let cos = self.cos.clone().reshape([1, s, 1, d]);
        let sin = self.sin.clone().reshape([1, s, 1, d]);
        let y = (x * cos + rotated * sin).reshape([b, s, inner]);
        if dtype == DType::F32 { y } else { y.cast(dtype) }
    }
}
