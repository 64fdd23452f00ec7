//! `reference_cache = true`: the frozen reference's per-pair errors for exactly the pairs,
//! noise and timesteps that training will draw, computed in one pass before training (every
//! batch is a function of the seed and the pairs' cursors, see `train::data`), so that the
//! reference UNet is freed before the first step and DPO-type methods train with MaPO's
//! memory. Two numbers per pair per step, held on the host in the loss precision.

use anyhow::Result;
use burn::tensor::{DType, Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};

use crate::data::stream::PairSource;
use crate::losses::{Errors, loss_dtype};
use crate::models::denoiser::Denoiser;
use crate::objective::Objective;
use crate::train::data::to_batch;
use crate::train::step::pair_errors_in;

pub struct ReferenceErrors {
    /// Cursor of the first pair held.
    start: usize,
    chosen: Vec<f64>,
    rejected: Vec<f64>,
}

/// What the pass computes on: the reference, its device, and the activations' dtype.
pub struct ReferencePass<'a, M> {
    pub reference: &'a M,
    pub device: &'a Device,
    pub dtype: DType,
    /// Pairs per reference call.
    pub chunk: usize,
    /// FLUX's embedded guidance scale in training (the reference sees what the policy sees).
    pub guidance: Option<f64>,
}

impl ReferenceErrors {
    /// The errors of the `count` pairs from cursor `start` on.
    pub fn compute(
        pass: &ReferencePass<impl Denoiser>,
        source: &PairSource,
        objective: &Objective,
        start: usize,
        count: usize,
    ) -> Result<Self> {
        let bar = ProgressBar::new(count as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "reference errors {bar:30} {pos}/{len} pairs [{elapsed_precise}<{eta_precise}]",
            )
            .expect("template"),
        );
        let mut stream = source.stream(start, 1);
        let (mut chosen, mut rejected) = (Vec::with_capacity(count), Vec::with_capacity(count));
        let mut done = 0;
        while done < count {
            let n = pass.chunk.min(count - done);
            let (rows, cursors) = stream.next(n)?;
            let batch = to_batch(&rows, &cursors, source.seed, objective, pass.guidance, pass.device);
            let e = pair_errors_in(pass.reference, &batch, objective, pass.dtype, true);
            chosen.extend(values(e.chosen));
            // Unpaired rows have no rejected image.
            if let Some(r) = e.rejected {
                rejected.extend(values(r));
            }
            done += n;
            bar.set_position(done as u64);
        }
        bar.finish_and_clear();
        Ok(Self { start, chosen, rejected })
    }

    /// The errors of the pairs at `cursors`, on `device` in the loss precision.
    pub fn get(&self, cursors: &[usize], device: &Device) -> Errors {
        let pick = |v: &[f64]| -> Tensor<1> {
            let xs: Vec<f64> = cursors.iter().map(|c| v[c - self.start]).collect();
            Tensor::from_data(TensorData::new(xs, [cursors.len()]), (device, loss_dtype(device)))
        };
        Errors { chosen: pick(&self.chosen), rejected: (!self.rejected.is_empty()).then(|| pick(&self.rejected)) }
    }
}

fn values(t: Tensor<1>) -> Vec<f64> {
    t.into_data().convert::<f64>().try_into_vec::<f64>().expect("f64 after the conversion")
}
