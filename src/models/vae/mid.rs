//! The VAE's mid block: resnet, single-head spatial self-attention, resnet.

use burn::module::Module;
use burn::tensor::Tensor;

use crate::models::attention::multi_head_attention;
use crate::models::nn::{GroupNorm, Linear};
use crate::models::resnet::ResnetBlock2D;
use crate::models::weights::Weights;

/// diffusers' `Attention` as the VAE builds it (`_from_deprecated_attn_block`): group norm,
/// biased q/k/v, one head over all channels, residual connection.
#[derive(Module, Debug)]
pub struct SpatialAttention {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    pub to_out_0: Linear,
}

impl SpatialAttention {
    /// Older checkpoints name the projections `query`, `key`, `value`, `proj_attn`.
    pub fn load(w: &Weights, channels: usize, groups: usize, eps: f64) -> Self {
        Self {
            group_norm: GroupNorm::load(&w.pp("group_norm"), groups, channels, eps),
            to_q: Linear::load_any(w, &["to_q", "query"], channels, channels, true),
            to_k: Linear::load_any(w, &["to_k", "key"], channels, channels, true),
            to_v: Linear::load_any(w, &["to_v", "value"], channels, channels, true),
            to_out_0: Linear::load_any(w, &["to_out.0", "proj_attn"], channels, channels, true),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let tokens = self.group_norm.forward(x.clone()).reshape([b, c, h * w]).swap_dims(1, 2);
        let q = self.to_q.forward(tokens.clone());
        let k = self.to_k.forward(tokens.clone());
        let v = self.to_v.forward(tokens);
        let out = self.to_out_0.forward(multi_head_attention(q, k, v, 1));
        out.swap_dims(1, 2).reshape([b, c, h, w]) + x
    }
}

#[derive(Module, Debug)]
pub struct VaeMidBlock {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<SpatialAttention>,
}

impl VaeMidBlock {
    pub fn load(w: &Weights, channels: usize, groups: usize, add_attention: bool) -> Self {
        let r = w.pp("resnets");
        Self {
            resnets: (0..2).map(|j| ResnetBlock2D::load(&r.pp(j), channels, channels, None, groups, 1e-6)).collect(),
            attentions: if add_attention {
                vec![SpatialAttention::load(&w.pp("attentions").pp(0), channels, groups, 1e-6)]
            } else {
                vec![]
            },
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.resnets[0].forward(x, None);
        for attn in &self.attentions {
            x = attn.forward(x);
        }
        self.resnets[1].forward(x, None)
    }
}
