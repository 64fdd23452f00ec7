//! Timestep embeddings: diffusers' `Timesteps` (sinusoidal) and `TimestepEmbedding` (MLP).

use burn::module::Module;
use burn::tensor::{DType, Tensor, TensorData};

use crate::models::nn::{Linear, silu};
use crate::models::weights::Weights;

/// diffusers' `get_timestep_embedding` with `max_period = 10000`, `scale = 1`, in f32.
///
/// `t`: [N] timesteps (as floats). Returns [N, dim].
pub fn timestep_embedding(t: Tensor<1>, dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> Tensor<2> {
    let half = dim / 2;
    // Same f32 operation order as PyTorch: (-ln(10000) * i) / (half - shift), then exp.
    let ln = -(10000f64.ln() as f32);
    let denom = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((ln * i as f32) / denom).exp()).collect();
    let device = t.device();
    let freqs = Tensor::<1>::from_data(TensorData::new(freqs, [half]), (&device, DType::F32));
    let t = if t.dtype() == DType::F32 { t } else { t.cast(DType::F32) };
    let args = t.unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim::<2>(0);
    let (sin, cos) = (args.clone().sin(), args.cos());
    let emb = if flip_sin_to_cos { Tensor::cat(vec![cos, sin], 1) } else { Tensor::cat(vec![sin, cos], 1) };
    if dim % 2 == 1 {
        let n = emb.dims()[0];
        Tensor::cat(vec![emb, Tensor::zeros([n, 1], (&device, DType::F32))], 1)
    } else {
        emb
    }
}

#[derive(Module, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn load(w: &Weights, d_in: usize, d_out: usize) -> Self {
        Self {
            linear_1: Linear::load(&w.pp("linear_1"), d_in, d_out, true),
            linear_2: Linear::load(&w.pp("linear_2"), d_out, d_out, true),
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.linear_2.forward(silu(self.linear_1.forward(x)))
    }
}
