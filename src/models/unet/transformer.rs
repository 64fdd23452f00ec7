//! diffusers' `Transformer2DModel` with `BasicTransformerBlock`s (SDXL: linear projections,
//! layer norms, self- then cross-attention, GEGLU feed-forward).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;

use crate::models::attention::Attention;
use crate::models::nn::{GroupNorm, LayerNorm, Linear};
use crate::models::weights::Weights;

/// `ff.net.0`: a projection to twice the inner width, half of it gating the other half.
#[derive(Module, Debug)]
pub struct GeGlu {
    pub proj: Linear,
}

#[derive(Module, Debug)]
pub struct FeedForward {
    pub net_0: GeGlu,
    pub net_2: Linear,
}

impl FeedForward {
    pub fn load(w: &Weights, dim: usize, mult: usize) -> Self {
        let inner = dim * mult;
        Self {
            net_0: GeGlu { proj: Linear::load(&w.pp("net.0.proj"), dim, inner * 2, true) },
            net_2: Linear::load(&w.pp("net.2"), inner, dim, true),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let mut halves = self.net_0.proj.forward(x).chunk(2, 2);
        let gate = halves.pop().expect("two halves");
        let hidden = halves.pop().expect("two halves");
        self.net_2.forward(hidden * gelu(gate))
    }
}

#[derive(Module, Debug)]
pub struct BasicTransformerBlock {
    pub norm1: LayerNorm,
    pub attn1: Attention,
    pub norm2: LayerNorm,
    pub attn2: Attention,
    pub norm3: LayerNorm,
    pub ff: FeedForward,
}

impl BasicTransformerBlock {
    pub fn load(w: &Weights, dim: usize, context_dim: usize, heads: usize) -> Self {
        let head_dim = dim / heads;
        Self {
            norm1: LayerNorm::load(&w.pp("norm1"), dim, 1e-5),
            attn1: Attention::load(&w.pp("attn1"), dim, dim, heads, head_dim, false),
            norm2: LayerNorm::load(&w.pp("norm2"), dim, 1e-5),
            attn2: Attention::load(&w.pp("attn2"), dim, context_dim, heads, head_dim, false),
            norm3: LayerNorm::load(&w.pp("norm3"), dim, 1e-5),
            ff: FeedForward::load(&w.pp("ff"), dim, 4),
        }
    }

    pub fn forward(&self, x: Tensor<3>, context: &Tensor<3>) -> Tensor<3> {
        let x = self.attn1.forward(self.norm1.forward(x.clone()), None) + x;
        let x = self.attn2.forward(self.norm2.forward(x.clone()), Some(context.clone())) + x;
        self.ff.forward(self.norm3.forward(x.clone())) + x
    }
}

#[derive(Module, Debug)]
pub struct Transformer2DModel {
    pub norm: GroupNorm,
    pub proj_in: Linear,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: Linear,
}

impl Transformer2DModel {
    pub fn load(w: &Weights, channels: usize, layers: usize, context_dim: usize, heads: usize, groups: usize) -> Self {
        let blocks = w.pp("transformer_blocks");
        Self {
            // diffusers hard-codes eps 1e-6 here, unlike the resnets' norm_eps.
            norm: GroupNorm::load(&w.pp("norm"), groups, channels, 1e-6),
            proj_in: Linear::load(&w.pp("proj_in"), channels, channels, true),
            transformer_blocks: (0..layers)
                .map(|i| BasicTransformerBlock::load(&blocks.pp(i), channels, context_dim, heads))
                .collect(),
            proj_out: Linear::load(&w.pp("proj_out"), channels, channels, true),
        }
    }

    pub fn forward(&self, x: Tensor<4>, context: &Tensor<3>) -> Tensor<4> {
        let residual = x.clone();
        let mut tokens = self.tokens_in(x);
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context);
        }
        self.tokens_out(tokens, residual)
    }

    /// Group norm and `proj_in` of a [B, C, h, w] map as [B, h·w, C] tokens.
    pub fn tokens_in(&self, x: Tensor<4>) -> Tensor<3> {
        let [b, c, h, w] = x.dims();
        let tokens = self.norm.forward(x).reshape([b, c, h * w]).swap_dims(1, 2);
        self.proj_in.forward(tokens)
    }

    /// `proj_out` back to the shape of `residual`, plus the residual.
    pub fn tokens_out(&self, tokens: Tensor<3>, residual: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = residual.dims();
        let out = self.proj_out.forward(tokens).swap_dims(1, 2).reshape([b, c, h, w]);
        out + residual
    }
}
