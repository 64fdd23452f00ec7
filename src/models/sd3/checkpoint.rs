//! Block-level gradient checkpointing of SD3's transformer, as diffusers does it (each joint
//! block a checkpoint): the forward pass runs without a graph and keeps only what flows
//! between blocks (image tokens, text states) and the timestep vector they all read; the
//! backward pass reruns the output layer, then each block in reverse, then the embeddings,
//! each with a graph on its saved inputs, and back-propagates the incoming gradient through
//! it alone. One extra forward, one block's activations alive at a time.
//!
//! The timestep vector feeds every block: its gradient is summed over them before the
//! embeddings' backward. Sums meet in another order than in the whole graph, so gradients
//! agree to rounding, not bit for bit (tests/sd3_train_step.rs states the tolerance).

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Gradients, Tensor};

use super::SD3Transformer2DModel;
use crate::models::tape::{accumulate, add, dot, leaf};
use crate::models::unet::checkpoint::trains;

/// The saved forward pass (plain tensors): each block's inputs, the timestep vector and
/// the output layer's input.
pub struct Sd3Tape {
    tokens: Vec<Tensor<3>>,
    context: Vec<Tensor<3>>,
    temb: Tensor<2>,
    last: Tensor<3>,
}

impl SD3Transformer2DModel {
    /// The prediction (plain, no graph) of this autodiff model, with what its backward needs
    /// kept in the tape. Inputs on the autodiff device.
    pub fn forward_checkpointed(
        &self,
        x: Tensor<4>,
        timestep: Tensor<1>,
        context: Tensor<3>,
        pooled: Tensor<2>,
    ) -> (Tensor<4>, Sd3Tape) {
        let plain = self.valid();
        let [b, _, h, w] = x.dims();
        crate::models::attention::as_trained(|| {
            let (mut tokens, context, temb) = plain.embed(x.inner(), timestep.inner(), context.inner(), pooled.inner());
            let (mut saved_tokens, mut saved_context) = (Vec::new(), Vec::new());
            let mut context = Some(context);
            for block in &plain.transformer_blocks {
                let c = context.take().expect("only the last block ends the text stream");
                saved_tokens.push(tokens.clone());
                saved_context.push(c.clone());
                let (c, x) = block.forward(tokens, c, &temb);
                context = c;
                tokens = x;
            }
            let pred = plain.head(tokens.clone(), &temb, [b, h, w]);
            (pred, Sd3Tape { tokens: saved_tokens, context: saved_context, temb, last: tokens })
        })
    }

    /// The gradients of this model's trainable parameters (flattened, on the inner device)
    /// for an upstream gradient `grad` of the prediction (plain, the prediction's dtype).
    /// Inputs as given to [`Self::forward_checkpointed`].
    pub fn backward_checkpointed(
        &self,
        tape: Sd3Tape,
        grad: Tensor<4>,
        x: Tensor<4>,
        timestep: Tensor<1>,
        context: Tensor<3>,
        pooled: Tensor<2>,
    ) -> BTreeMap<String, Tensor<1>> {
        let mut out: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        let mut collect = |backward: &Gradients| accumulate(&mut out, self, backward);
        let [b, _, h, w] = x.dims();
        // The output layer.
        let (tokens, temb) = (leaf(&tape.last), leaf(&tape.temb));
        let backward = dot(self.head(tokens.clone(), &temb, [b, h, w]), grad).backward();
        collect(&backward);
        let mut g_tokens = tokens.grad(&backward);
        let mut g_temb = temb.grad(&backward);
        let mut g_context: Option<Tensor<3>> = None;
        // The blocks, last first.
        for (i, block) in self.transformer_blocks.iter().enumerate().rev() {
            let (tokens, context, temb) = (leaf(&tape.tokens[i]), leaf(&tape.context[i]), leaf(&tape.temb));
            let (c, y) = block.forward(tokens.clone(), context.clone(), &temb);
            let mut surrogate = dot(y, g_tokens.take().expect("the image stream's gradient"));
            if let (Some(c), Some(g)) = (c, g_context.take()) {
                surrogate = surrogate + dot(c, g);
            }
            let backward = surrogate.backward();
            collect(&backward);
            g_tokens = tokens.grad(&backward);
            g_context = context.grad(&backward);
            g_temb = add(g_temb, temb.grad(&backward));
        }
        // The embeddings, when anything in them trains (not in a LoRA run).
        if trains(&self.pos_embed) || trains(&self.time_text_embed) || trains(&self.context_embedder) {
            let (tokens, context, temb) = self.embed(x, timestep, context, pooled);
            let mut surrogate = dot(tokens, g_tokens.expect("the image stream's gradient"));
            if let Some(g) = g_context {
                surrogate = surrogate + dot(context, g);
            }
            if let Some(g) = g_temb {
                surrogate = surrogate + dot(temb, g);
            }
            collect(&surrogate.backward());
        }
        out
    }
}
