//! Diffusion-DPO (Wallace et al. 2023): the DPO objective on denoising errors relative to a
//! frozen reference model.

use anyhow::{Result, ensure};
use burn::tensor::Tensor;

use super::{Errors, LossOutput, Params, PreferenceLoss, log_sigmoid, scalar_out};

#[derive(Debug)]
pub struct DiffusionDpo {
    /// β; 5000 for SDXL, 2500 for SD 1.5.
    pub beta: f64,
}

pub(super) fn build(p: &mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])> {
    let beta = p.take("beta", 5000.0);
    ensure!(beta > 0.0, "dpo: beta must be positive, got {beta}");
    Ok((Box::new(DiffusionDpo { beta }), &["beta"]))
}

impl PreferenceLoss for DiffusionDpo {
    fn name(&self) -> &'static str {
        "dpo"
    }

    fn uses_reference(&self) -> bool {
        true
    }

    fn compute(&self, policy: &Errors, reference: Option<&Errors>) -> LossOutput {
        let reference = reference.expect("dpo needs the reference model's errors");
        let model_diff = policy.chosen.clone() - policy.rejected().clone();
        let ref_diff = reference.chosen.clone() - reference.rejected().clone();
        let inside: Tensor<1> = (model_diff - ref_diff.detach()).mul_scalar(-0.5 * self.beta);
        let loss = log_sigmoid(inside.clone()).mean().neg();
        // A tie counts as half right.
        let wins = inside.clone().greater_elem(0.0).float() + inside.clone().equal_elem(0.0).float().mul_scalar(0.5);
        LossOutput {
            loss: scalar_out(loss),
            metrics: vec![
                ("implicit_acc", scalar_out(wins.mean())),
                ("chosen_loss", scalar_out(policy.chosen.clone().mean())),
                ("rejected_loss", scalar_out(policy.rejected().clone().mean())),
                ("ref_chosen_loss", scalar_out(reference.chosen.clone().mean())),
                ("ref_rejected_loss", scalar_out(reference.rejected().clone().mean())),
            ],
        }
    }
}
