//! IPO (Azar et al. 2023) on diffusion errors: diffusers' Diffusion-DPO script with
//! `loss_type="ipo"`, `mean((z − 1/(2β))²)` with z the DPO logit. That branch names an
//! undefined `beta`; the DPO β is the one meant.

use anyhow::Result;

use super::dpo::{NEEDS, logit, take_beta};
use super::{LossInput, LossOutput, Needs, Params, PreferenceLoss, scalar_out};

#[derive(Debug)]
pub struct Ipo {
    pub beta: f64,
}

pub(super) fn build(p: &mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])> {
    Ok((Box::new(Ipo { beta: take_beta(p, "ipo", 5000.0)? }), &["beta"]))
}

impl PreferenceLoss for Ipo {
    fn needs(&self) -> Needs {
        NEEDS
    }

    fn compute(&self, input: &LossInput) -> LossOutput {
        let loss = logit(input, self.beta).sub_scalar(0.5 / self.beta).square().mean();
        LossOutput { loss: scalar_out(loss), metrics: vec![] }
    }
}
