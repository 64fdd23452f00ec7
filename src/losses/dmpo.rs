//! DMPO (Diffusion-SDPO repository): the KL divergence between p = σ(z), z the DPO logit,
//! and a target preference probability q = 1 − α, per pair:
//! `p·(log p − log q) + (1 − p)·(log(1 − p) − log(1 − q))`, with
//! `log p = −softplus(−z)` and `log(1 − p) = −softplus(z)`.

use anyhow::{Result, ensure};

use super::dpo::{NEEDS, logit, take_beta};
use super::{LossInput, LossOutput, Needs, Params, PreferenceLoss, scalar_out, softplus};

#[derive(Debug)]
pub struct Dmpo {
    /// β (6000 in the SDXL script).
    pub beta: f64,
    /// α: the target probability that the chosen image wins is 1 − α (0.01).
    pub alpha: f64,
}

/// The official code clamps q into [ε, 1 − ε].
const Q_EPS: f64 = 1e-6;

pub(super) fn build(p: &mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])> {
    let beta = take_beta(p, "dmpo", 6000.0)?;
    let alpha = p.take("alpha", 0.01);
    ensure!((0.0..=1.0).contains(&alpha), "dmpo: alpha must be in [0, 1], got {alpha}");
    Ok((Box::new(Dmpo { beta, alpha }), &["beta", "alpha"]))
}

impl PreferenceLoss for Dmpo {
    fn needs(&self) -> Needs {
        NEEDS
    }

    fn compute(&self, input: &LossInput) -> LossOutput {
        let q = (1.0 - self.alpha).clamp(Q_EPS, 1.0 - Q_EPS);
        let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
        let z = logit(input, self.beta);
        let log_p = softplus(z.clone().neg()).neg();
        let log_1mp = softplus(z).neg();
        let p = log_p.clone().exp();
        let one_minus_p = log_1mp.clone().exp();
        let kl = p * log_p.sub_scalar(log_q) + one_minus_p * log_1mp.sub_scalar(log_1mq);
        LossOutput { loss: scalar_out(kl.mean()), metrics: vec![] }
    }
}
