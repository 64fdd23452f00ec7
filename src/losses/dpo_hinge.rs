//! DPO with the hinge loss (SLiC-style): diffusers' Diffusion-DPO script with
//! `loss_type="hinge"`, `mean(relu(1 − z))` with z the DPO logit.

use anyhow::Result;

use super::dpo::{NEEDS, logit, take_beta};
use super::{LossInput, LossOutput, Needs, Params, PreferenceLoss, scalar_out};

#[derive(Debug)]
pub struct DpoHinge {
    pub beta: f64,
}

pub(super) fn build(p: &mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])> {
    Ok((Box::new(DpoHinge { beta: take_beta(p, "dpo_hinge", 5000.0)? }), &["beta"]))
}

impl PreferenceLoss for DpoHinge {
    fn needs(&self) -> Needs {
        NEEDS
    }

    fn compute(&self, input: &LossInput) -> LossOutput {
        let loss = logit(input, self.beta).neg().add_scalar(1.0).clamp_min(0.0).mean();
        LossOutput { loss: scalar_out(loss), metrics: vec![] }
    }
}
