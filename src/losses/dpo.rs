//! Diffusion-DPO (Wallace et al. 2023): the DPO objective on denoising errors relative to a
//! frozen reference model.

use anyhow::{Result, ensure};
use burn::tensor::Tensor;

use super::{LossInput, LossOutput, Needs, Params, PreferenceLoss, log_sigmoid, scalar_out};

/// A reference method on pairs: policy and reference errors of chosen and rejected rows.
pub(super) const NEEDS: Needs = Needs { rejected: true, reference: true, predictions: false, pairs: true };

#[derive(Debug)]
pub struct DiffusionDpo {
    /// β; 5000 for SDXL, 2500 for SD 1.5.
    pub beta: f64,
}

/// β with its default and a check, for every method of the DPO family.
pub(super) fn take_beta(p: &mut Params, method: &str, default: f64) -> Result<f64> {
    let beta = p.take("beta", default);
    ensure!(beta > 0.0 && beta.is_finite(), "{method}: beta must be positive, got {beta}");
    Ok(beta)
}

pub(super) fn build(p: &mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])> {
    Ok((Box::new(DiffusionDpo { beta: take_beta(p, "dpo", 5000.0)? }), &["beta"]))
}

/// The DPO logit per pair, `z = −β/2 · ((L_w − L_l) − (R_w − R_l))` (the reference detached).
pub(super) fn logit(input: &LossInput, beta: f64) -> Tensor<1> {
    let model_diff = input.chosen() - input.rejected();
    let ref_diff = input.ref_chosen() - input.ref_rejected();
    (model_diff - ref_diff.detach()).mul_scalar(-0.5 * beta)
}

impl PreferenceLoss for DiffusionDpo {
    fn needs(&self) -> Needs {
        NEEDS
    }

    fn compute(&self, input: &LossInput) -> LossOutput {
        let loss = log_sigmoid(logit(input, self.beta)).mean().neg();
        LossOutput { loss: scalar_out(loss), metrics: vec![] }
    }
}
