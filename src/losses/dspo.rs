//! DSPO (Diffusion-SDPO repository, SDXL branch): score matching towards the reference,
//! weighted by how wrong the DPO logit z is. With d = ε_θ − ε_ref on the chosen rows
//! (reference detached): when the batch's mean of mean(d²) is at least 0.1,
//! `mean over chosen of mean(((1 − σ(z))·d)²)`, else `mean((1 − σ(z))²)`.

use anyhow::Result;

use super::dpo::{logit, take_beta};
use super::{LossInput, LossOutput, Needs, Params, PreferenceLoss, per_sample_errors_in, scalar_out, sigmoid};

#[derive(Debug)]
pub struct Dspo {
    pub beta: f64,
}

/// The official switch between the two forms, on the batch's mean squared distance to the reference.
const SWITCH: f64 = 0.1;

pub(super) fn build(p: &mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])> {
    Ok((Box::new(Dspo { beta: take_beta(p, "dspo", 5000.0)? }), &["beta"]))
}

impl PreferenceLoss for Dspo {
    fn needs(&self) -> Needs {
        Needs { rejected: true, reference: true, predictions: true, pairs: true }
    }

    fn compute(&self, input: &LossInput) -> LossOutput {
        let p = input.predictions();
        let reference = p.reference.clone().expect("dspo needs the reference's prediction");
        let b = input.rows() / 2;
        let dtype = input.policy.dtype();
        // mean over (C,h,w) of d² per chosen row: ((1 − σ)·d)² factors into (1 − σ)²·mean(d²).
        let d2 = per_sample_errors_in(p.policy.clone().narrow(0, 0, b), reference.narrow(0, 0, b), dtype);
        let miss = sigmoid(logit(input, self.beta).neg()).square();
        let weighted = (miss.clone() * d2.clone()).mean();
        let plain = miss.mean();
        let far = d2.mean().detach().greater_equal_elem(SWITCH);
        let loss = plain.mask_where(far.clone(), weighted);
        LossOutput { loss: scalar_out(loss), metrics: vec![("dspo_far", scalar_out(far.float()))] }
    }
}
