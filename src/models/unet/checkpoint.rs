//! Block-level gradient checkpointing of the UNet, as diffusers does it (each resnet and each
//! transformer block a checkpoint): the forward pass runs without a graph and keeps only the
//! tensors that flow *between* units; the backward pass walks the units in reverse, reruns
//! each one with a graph on its saved inputs and back-propagates the output gradient through
//! it alone. One extra forward, and at most one unit's activations alive at a time.
//!
//! Burn's own `gradient_checkpointing()` works per op and cannot do this for LoRA: an op with
//! a frozen (untracked) operand — every norm's scale, every frozen linear — is kept, not
//! recomputed, so it saved nothing at SDXL size (19.9 GB with it, 19.7 GB without).
//!
//! The units form a small program over numbered slots (the tensors between units); the
//! same program runs forward on the plain model and backward on the autodiff one, so the
//! values, and the order in which gradients meeting at a slot are summed (the later consumer
//! first, as Burn's graph walk does), are the unsegmented pass's: the gradients are equal
//! bit for bit (tests/checkpointing.rs).

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

use super::{TextTime, UNet2DConditionModel};
use crate::models::named::param_grads;
use crate::models::nn::silu;

/// A tensor between units.
#[derive(Clone, Debug)]
enum Value {
    Emb(Tensor<2>),
    Tokens(Tensor<3>),
    Map(Tensor<4>),
}

impl Value {
    fn map(self) -> Tensor<4> {
        match self {
            Value::Map(t) => t,
            other => panic!("expected a feature map between UNet units, got {other:?}"),
        }
    }
    fn tokens(self) -> Tensor<3> {
        match self {
            Value::Tokens(t) => t,
            other => panic!("expected tokens between UNet units, got {other:?}"),
        }
    }
    fn emb(self) -> Tensor<2> {
        match self {
            Value::Emb(t) => t,
            other => panic!("expected the time embedding, got {other:?}"),
        }
    }
    /// An autodiff leaf holding `self` (a plain tensor), tracked so its gradient can be read.
    fn leaf(&self) -> Value {
        match self {
            Value::Emb(t) => Value::Emb(Tensor::from_inner(t.clone()).require_grad()),
            Value::Tokens(t) => Value::Tokens(Tensor::from_inner(t.clone()).require_grad()),
            Value::Map(t) => Value::Map(Tensor::from_inner(t.clone()).require_grad()),
        }
    }
    /// Σ (self · grad): back-propagating it gives the vector-Jacobian product with `grad`.
    fn dot(&self, grad: &Value) -> Tensor<1> {
        match (self, grad) {
            (Value::Emb(t), Value::Emb(g)) => (t.clone() * Tensor::from_inner(g.clone())).sum(),
            (Value::Tokens(t), Value::Tokens(g)) => (t.clone() * Tensor::from_inner(g.clone())).sum(),
            (Value::Map(t), Value::Map(g)) => (t.clone() * Tensor::from_inner(g.clone())).sum(),
            _ => panic!("a gradient of another kind than its tensor"),
        }
    }
    fn grad(&self, grads: &burn::tensor::Gradients) -> Option<Value> {
        match self {
            Value::Emb(t) => t.grad(grads).map(Value::Emb),
            Value::Tokens(t) => t.grad(grads).map(Value::Tokens),
            Value::Map(t) => t.grad(grads).map(Value::Map),
        }
    }
}

/// Which part of the UNet a unit runs (indices into its blocks).
#[derive(Clone, Copy, Debug)]
enum Part {
    Embedding,
    ConvIn,
    DownResnet(usize, usize),
    DownAttnIn(usize, usize),
    DownAttnBlock(usize, usize, usize),
    DownAttnOut(usize, usize),
    Downsample(usize),
    MidResnet(usize),
    MidAttnIn(usize),
    MidAttnBlock(usize, usize),
    MidAttnOut(usize),
    UpResnet(usize, usize),
    UpAttnIn(usize, usize),
    UpAttnBlock(usize, usize, usize),
    UpAttnOut(usize, usize),
    /// Upsampling to the spatial size of the slot named (read for its shape only).
    Upsample(usize, usize),
    Out,
}

struct Unit {
    part: Part,
    inputs: Vec<usize>,
    output: usize,
}

/// The UNet's forward pass as units over slots; slot 0 is the time embedding.
struct Program {
    units: Vec<Unit>,
    slots: usize,
}

impl Program {
    fn of(unet: &UNet2DConditionModel) -> Self {
        let mut p = Program { units: Vec::new(), slots: 0 };
        let emb = p.push(Part::Embedding, vec![]);
        let mut x = p.push(Part::ConvIn, vec![]);
        let mut skips = vec![x];
        for (i, block) in unet.down_blocks.iter().enumerate() {
            for j in 0..block.resnets.len() {
                x = p.push(Part::DownResnet(i, j), vec![x, emb]);
                if let Some(attn) = block.attentions.get(j) {
                    let tokens = p.push(Part::DownAttnIn(i, j), vec![x]);
                    let mut t = tokens;
                    for k in 0..attn.transformer_blocks.len() {
                        t = p.push(Part::DownAttnBlock(i, j, k), vec![t]);
                    }
                    x = p.push(Part::DownAttnOut(i, j), vec![t, x]);
                }
                skips.push(x);
            }
            if !block.downsamplers.is_empty() {
                x = p.push(Part::Downsample(i), vec![x]);
                skips.push(x);
            }
        }
        let mid = &unet.mid_block;
        x = p.push(Part::MidResnet(0), vec![x, emb]);
        for (k, attn) in mid.attentions.iter().enumerate() {
            let mut t = p.push(Part::MidAttnIn(k), vec![x]);
            for l in 0..attn.transformer_blocks.len() {
                t = p.push(Part::MidAttnBlock(k, l), vec![t]);
            }
            x = p.push(Part::MidAttnOut(k), vec![t, x]);
            x = p.push(Part::MidResnet(k + 1), vec![x, emb]);
        }
        for (i, block) in unet.up_blocks.iter().enumerate() {
            for j in 0..block.resnets.len() {
                let skip = skips.pop().expect("one skip connection per up resnet");
                x = p.push(Part::UpResnet(i, j), vec![x, skip, emb]);
                if let Some(attn) = block.attentions.get(j) {
                    let mut t = p.push(Part::UpAttnIn(i, j), vec![x]);
                    for k in 0..attn.transformer_blocks.len() {
                        t = p.push(Part::UpAttnBlock(i, j, k), vec![t]);
                    }
                    x = p.push(Part::UpAttnOut(i, j), vec![t, x]);
                }
            }
            if !block.upsamplers.is_empty() {
                // The next skip connection fixes the size (odd sizes do not double exactly).
                let size_of = skips.last().copied().unwrap_or(usize::MAX);
                x = p.push(Part::Upsample(i, size_of), vec![x]);
            }
        }
        p.push(Part::Out, vec![x]);
        p
    }

    fn push(&mut self, part: Part, inputs: Vec<usize>) -> usize {
        let output = self.slots;
        self.slots += 1;
        self.units.push(Unit { part, inputs, output });
        output
    }
}

/// What every unit reads besides its slots.
struct Fixed<'a> {
    sample: Tensor<4>,
    timestep: Tensor<1>,
    context: Tensor<3>,
    cond: Option<&'a TextTime>,
}

fn run(unet: &UNet2DConditionModel, part: Part, inputs: Vec<Value>, fixed: &Fixed, slots: &[Option<Value>]) -> Value {
    let mut inputs = inputs.into_iter();
    let mut next = || inputs.next().expect("a unit's inputs");
    let emb_dtype = fixed.sample.dtype();
    match part {
        Part::Embedding => Value::Emb(unet.embedding(fixed.timestep.clone(), fixed.cond, emb_dtype)),
        Part::ConvIn => Value::Map(unet.conv_in.forward(fixed.sample.clone())),
        Part::DownResnet(i, j) => {
            let (x, emb) = (next().map(), next().emb());
            Value::Map(unet.down_blocks[i].resnets[j].forward(x, Some(&emb)))
        }
        Part::DownAttnIn(i, j) => Value::Tokens(unet.down_blocks[i].attentions[j].tokens_in(next().map())),
        Part::DownAttnBlock(i, j, k) => Value::Tokens(
            unet.down_blocks[i].attentions[j].transformer_blocks[k].forward(next().tokens(), &fixed.context),
        ),
        Part::DownAttnOut(i, j) => {
            let (t, residual) = (next().tokens(), next().map());
            Value::Map(unet.down_blocks[i].attentions[j].tokens_out(t, residual))
        }
        Part::Downsample(i) => Value::Map(unet.down_blocks[i].downsamplers[0].forward(next().map())),
        Part::MidResnet(k) => {
            let (x, emb) = (next().map(), next().emb());
            Value::Map(unet.mid_block.resnets[k].forward(x, Some(&emb)))
        }
        Part::MidAttnIn(k) => Value::Tokens(unet.mid_block.attentions[k].tokens_in(next().map())),
        Part::MidAttnBlock(k, l) => {
            Value::Tokens(unet.mid_block.attentions[k].transformer_blocks[l].forward(next().tokens(), &fixed.context))
        }
        Part::MidAttnOut(k) => {
            let (t, residual) = (next().tokens(), next().map());
            Value::Map(unet.mid_block.attentions[k].tokens_out(t, residual))
        }
        Part::UpResnet(i, j) => {
            let (x, skip, emb) = (next().map(), next().map(), next().emb());
            Value::Map(unet.up_blocks[i].resnets[j].forward(Tensor::cat(vec![x, skip], 1), Some(&emb)))
        }
        Part::UpAttnIn(i, j) => Value::Tokens(unet.up_blocks[i].attentions[j].tokens_in(next().map())),
        Part::UpAttnBlock(i, j, k) => Value::Tokens(
            unet.up_blocks[i].attentions[j].transformer_blocks[k].forward(next().tokens(), &fixed.context),
        ),
        Part::UpAttnOut(i, j) => {
            let (t, residual) = (next().tokens(), next().map());
            Value::Map(unet.up_blocks[i].attentions[j].tokens_out(t, residual))
        }
        Part::Upsample(i, size_of) => {
            let size = slots.get(size_of).and_then(|s| s.as_ref()).map(|s| {
                let [_, _, h, w] = s.clone().map().dims();
                [h, w]
            });
            Value::Map(unet.up_blocks[i].upsamplers[0].forward(next().map(), size))
        }
        Part::Out => Value::Map(unet.conv_out.forward(silu(unet.conv_norm_out.forward(next().map())))),
    }
}

/// The saved forward pass: the prediction and every slot's plain tensor.
pub struct Tape {
    program: Program,
    slots: Vec<Option<Value>>,
}

impl UNet2DConditionModel {
    /// The prediction (plain, no graph) of this autodiff model, with the tensors between
    /// units kept for [`Self::backward_checkpointed`]. Inputs on the autodiff device.
    pub fn forward_checkpointed(
        &self,
        sample: Tensor<4>,
        timestep: Tensor<1>,
        context: Tensor<3>,
        cond: Option<&TextTime>,
    ) -> (Tensor<4>, Tape) {
        let plain_model = self.valid();
        let plain_cond =
            cond.map(|c| TextTime { text_embeds: c.text_embeds.clone().inner(), time_ids: c.time_ids.clone().inner() });
        let fixed = Fixed {
            sample: sample.inner(),
            timestep: timestep.inner(),
            context: context.inner(),
            cond: plain_cond.as_ref(),
        };
        let program = Program::of(self);
        let mut slots: Vec<Option<Value>> = vec![None; program.slots];
        crate::models::attention::as_trained(|| {
            for unit in &program.units {
                let inputs = unit.inputs.iter().map(|&s| slots[s].clone().expect("an earlier unit's output")).collect();
                slots[unit.output] = Some(run(&plain_model, unit.part, inputs, &fixed, &slots));
            }
        });
        let last = program.units.last().expect("units").output;
        let pred = slots[last].clone().expect("the prediction").map();
        (pred, Tape { program, slots })
    }

    /// The gradients of this model's trainable parameters (flattened, on the inner device)
    /// for an upstream gradient `grad` of the prediction (plain, the prediction's dtype),
    /// unit by unit in reverse. Inputs as given to [`Self::forward_checkpointed`].
    pub fn backward_checkpointed(
        &self,
        tape: Tape,
        grad: Tensor<4>,
        sample: Tensor<4>,
        timestep: Tensor<1>,
        context: Tensor<3>,
        cond: Option<&TextTime>,
    ) -> BTreeMap<String, Tensor<1>> {
        let fixed = Fixed { sample, timestep, context, cond };
        let Tape { program, slots } = tape;
        let mut grads: Vec<Option<Value>> = vec![None; program.slots];
        let last = program.units.last().expect("units").output;
        grads[last] = Some(Value::Map(grad));
        let mut out: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        let trainable_before = trainable_prefix(self, &program);
        for (u, unit) in program.units.iter().enumerate().rev() {
            let Some(g) = grads[unit.output].take() else { continue };
            // Units before the first trainable parameter (the embedding, conv_in of a
            // LoRA run) need no backward: nothing upstream of them learns.
            if !trainable_before[u] {
                continue;
            }
            let leaves: Vec<Value> = unit.inputs.iter().map(|&s| slots[s].as_ref().expect("saved").leaf()).collect();
            let y = run(self, unit.part, leaves.clone(), &fixed, &slots);
            let mut surrogate = y.dot(&g);
            // The gradient later consumers already sent into an input joins it first, as in
            // the whole graph (where their ops run later, so their backward runs earlier):
            // (later + residual) + norm, not later + (residual + norm).
            for (&s, leaf) in unit.inputs.iter().zip(&leaves) {
                if let Some(acc) = grads[s].take() {
                    surrogate = surrogate + leaf.dot(&acc);
                }
            }
            let backward = surrogate.backward();
            for (name, grad, _) in param_grads(self, &backward) {
                if let Some(grad) = grad {
                    let total = match out.remove(&name) {
                        Some(acc) => acc + grad,
                        None => grad,
                    };
                    out.insert(name, total);
                }
            }
            // Each input's gradient, now including the later consumers' shares.
            for (&s, leaf) in unit.inputs.iter().zip(&leaves) {
                grads[s] = leaf.grad(&backward);
            }
        }
        out
    }
}

/// For each unit: whether it or any unit before it has a trainable parameter.
fn trainable_prefix(unet: &UNet2DConditionModel, program: &Program) -> Vec<bool> {
    let mut seen = false;
    program
        .units
        .iter()
        .map(|unit| {
            seen = seen || part_trains(unet, unit.part);
            seen
        })
        .collect()
}

fn part_trains(unet: &UNet2DConditionModel, part: Part) -> bool {
    match part {
        Part::Embedding => trains(&unet.time_embedding) || unet.add_embedding.as_ref().is_some_and(trains),
        Part::ConvIn => trains(&unet.conv_in),
        // Later units are past the first resnet; the prefix is true by then in any run
        // that trains something inside the blocks.
        _ => true,
    }
}

/// Whether any parameter of `m` requires a gradient.
pub(crate) fn trains<M: Module>(m: &M) -> bool {
    struct Any(bool);
    impl ModuleVisitor for Any {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0 |= param.is_require_grad();
        }
    }
    let mut v = Any(false);
    m.visit(&mut v);
    v.0
}
