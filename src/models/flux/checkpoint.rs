//! Block-level gradient checkpointing of FLUX's transformer, as diffusers does it (each
//! double- and single-stream block a checkpoint), on the unpacked-latents path the trainer
//! uses: the forward pass runs without a graph and keeps what flows between blocks and the
//! conditioning vector; the backward reruns the output layer, the single-stream blocks,
//! then the double-stream blocks in reverse, then the embeddings, each with a graph on its
//! saved inputs. The rotary tables are constants, rebuilt on the autodiff device.
//!
//! Sums meet in another order than in the whole graph, so gradients agree to rounding, not
//! bit for bit (tests/flux_train_step.rs states the tolerance).

use std::collections::BTreeMap;

use burn::module::Module;
use burn::tensor::{Gradients, Tensor};

use super::{FluxTransformer2DModel, Shared, pack};
use crate::models::rope::{Rope, THETA};
use crate::models::tape::{accumulate, add, dot, leaf};
use crate::models::unet::checkpoint::trains;

/// The saved forward pass (plain tensors).
pub struct FluxTape {
    tokens: Vec<Tensor<3>>,
    context: Vec<Tensor<3>>,
    joint: Vec<Tensor<3>>,
    temb: Tensor<2>,
    last: Tensor<3>,
}

/// The model's time t = σ·1000 as the pipeline passes it (t/1000; the model multiplies back).
fn sigma(t: Tensor<1>) -> Tensor<1> {
    t.div_scalar(1000.0)
}

impl FluxTransformer2DModel {
    fn embed_latents(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        context: Tensor<3>,
        pooled: Tensor<2>,
        guidance: Option<Tensor<1>>,
    ) -> (Tensor<3>, Tensor<3>, Shared) {
        let [_, _, h, w] = x.dims();
        let (img, txt) = pack::ids(h, w, context.dims()[1]);
        self.embed(pack::pack(x), sigma(t), context, pooled, &img, &txt, guidance)
    }

    fn rope_on(&self, h: usize, w: usize, l: usize, device: &burn::tensor::Device) -> Rope {
        let (img, txt) = pack::ids(h, w, l);
        Rope::cat(&Rope::new(&img, &self.axes, THETA, device), &Rope::new(&txt, &self.axes, THETA, device))
    }

    /// The prediction (plain, unpacked) of this autodiff model for unpacked latents at the
    /// model time σ·1000, with what its backward needs kept in the tape.
    pub fn forward_checkpointed(
        &self,
        x: Tensor<4>,
        t: Tensor<1>,
        context: Tensor<3>,
        pooled: Tensor<2>,
        guidance: Option<Tensor<1>>,
    ) -> (Tensor<4>, FluxTape) {
        let plain = self.valid();
        let [_, _, h, w] = x.dims();
        crate::models::attention::as_trained(|| {
            let (mut tokens, mut context, shared) =
                plain.embed_latents(x.inner(), t.inner(), context.inner(), pooled.inner(), guidance.map(|g| g.inner()));
            let n = tokens.dims()[1];
            let (mut saved_tokens, mut saved_context, mut saved_joint) = (Vec::new(), Vec::new(), Vec::new());
            for block in &plain.transformer_blocks {
                saved_tokens.push(tokens.clone());
                saved_context.push(context.clone());
                let (c, x) = block.forward_rope(tokens, context, &shared.temb, Some(&shared.rope));
                context = c.expect("FLUX's double-stream blocks keep the text stream");
                tokens = x;
            }
            let mut joint = Tensor::cat(vec![tokens, context], 1);
            for block in &plain.single_transformer_blocks {
                saved_joint.push(joint.clone());
                joint = block.forward(joint, &shared.temb, &shared.rope);
            }
            let last = joint.narrow(1, 0, n);
            let pred = pack::unpack(plain.head(last.clone(), &shared), h, w);
            let tape =
                FluxTape { tokens: saved_tokens, context: saved_context, joint: saved_joint, temb: shared.temb, last };
            (pred, tape)
        })
    }

    /// The gradients of this model's trainable parameters (flattened, on the inner device)
    /// for an upstream gradient `grad` of the unpacked prediction. Inputs as given to
    /// [`Self::forward_checkpointed`].
    #[allow(clippy::too_many_arguments)]
    pub fn backward_checkpointed(
        &self,
        tape: FluxTape,
        grad: Tensor<4>,
        x: Tensor<4>,
        t: Tensor<1>,
        context: Tensor<3>,
        pooled: Tensor<2>,
        guidance: Option<Tensor<1>>,
    ) -> BTreeMap<String, Tensor<1>> {
        let mut out: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        let mut collect = |backward: &Gradients| accumulate(&mut out, self, backward);
        let [_, _, h, w] = x.dims();
        let l = context.dims()[1];
        let rope = self.rope_on(h, w, l, &x.device());
        let temb = leaf(&tape.temb);
        let s = |temb: Tensor<2>| Shared { temb, rope: rope.clone() };

        // The output layer.
        let tokens = leaf(&tape.last);
        let shared = s(temb.clone());
        let backward = dot(self.head(tokens.clone(), &shared), pack::pack(grad)).backward();
        collect(&backward);
        let g_tokens = tokens.grad(&backward).expect("the image stream's gradient");
        let mut g_temb = temb.grad(&backward);

        // The single-stream blocks, last first; the text part of the last output is unused.
        let [b, n, d] = g_tokens.dims();
        let zeros = Tensor::zeros([b, l, d], (&g_tokens.device(), g_tokens.dtype()));
        let mut g_joint = Tensor::cat(vec![g_tokens, zeros], 1);
        for (i, block) in self.single_transformer_blocks.iter().enumerate().rev() {
            let (joint, temb) = (leaf(&tape.joint[i]), leaf(&tape.temb));
            let backward = dot(block.forward(joint.clone(), &temb, &rope), g_joint).backward();
            collect(&backward);
            g_joint = joint.grad(&backward).expect("the joint stream's gradient");
            g_temb = add(g_temb, temb.grad(&backward));
        }
        let mut g_tokens = g_joint.clone().narrow(1, 0, n);
        let mut g_context = g_joint.narrow(1, n, l);

        // The double-stream blocks, last first.
        for (i, block) in self.transformer_blocks.iter().enumerate().rev() {
            let (tokens, context, temb) = (leaf(&tape.tokens[i]), leaf(&tape.context[i]), leaf(&tape.temb));
            let (c, y) = block.forward_rope(tokens.clone(), context.clone(), &temb, Some(&rope));
            let c = c.expect("FLUX's double-stream blocks keep the text stream");
            let backward = (dot(y, g_tokens) + dot(c, g_context)).backward();
            collect(&backward);
            g_tokens = tokens.grad(&backward).expect("the image stream's gradient");
            g_context = context.grad(&backward).expect("the text stream's gradient");
            g_temb = add(g_temb, temb.grad(&backward));
        }

        // The embeddings, when anything in them trains (not in a LoRA run).
        if trains(&self.x_embedder) || trains(&self.time_text_embed) || trains(&self.context_embedder) {
            let (tokens, context, shared) = self.embed_latents(x, t, context, pooled, guidance);
            let mut surrogate = dot(tokens, g_tokens) + dot(context, g_context);
            if let Some(g) = g_temb {
                surrogate = surrogate + dot(shared.temb, g);
            }
            collect(&surrogate.backward());
        }
        out
    }
}
