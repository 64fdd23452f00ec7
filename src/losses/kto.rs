//! Diffusion-KTO (Li et al. 2024, `halo = sigmoid`): each row is desirable (y = 1) or
//! undesirable (y = 0) on its own, so pairs are not needed. With g = R − L per row and
//! k = max(mean(g), 0) detached, `h = σ((2y − 1)·β·(g − k))` and
//! `loss = mean((λ_d·y + λ_u·(1 − y))·(1 − h))`. Pair data gives one desirable and one
//! undesirable row per pair.

use anyhow::{Result, ensure};

use super::{LossInput, LossOutput, Needs, Params, PreferenceLoss, scalar_out, sigmoid};

#[derive(Debug)]
pub struct Kto {
    pub beta: f64,
    pub lambda_d: f64,
    pub lambda_u: f64,
}

pub(super) fn build(p: &mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])> {
    let beta = super::dpo::take_beta(p, "kto", 1000.0)?;
    let (lambda_d, lambda_u) = (p.take("lambda_d", 1.0), p.take("lambda_u", 1.0));
    ensure!(lambda_d >= 0.0 && lambda_u >= 0.0, "kto: lambda_d and lambda_u must be ≥ 0");
    Ok((Box::new(Kto { beta, lambda_d, lambda_u }), &["beta", "lambda_d", "lambda_u"]))
}

impl PreferenceLoss for Kto {
    fn needs(&self) -> Needs {
        Needs { rejected: true, reference: true, predictions: false, pairs: false }
    }

    fn compute(&self, input: &LossInput) -> LossOutput {
        let g = input.reference() - input.policy.clone();
        let k = g.clone().mean().clamp_min(0.0).detach();
        let k_rows = k.clone().expand([input.rows()]);
        let y = input.labels.clone();
        let sign = y.clone().mul_scalar(2.0).sub_scalar(1.0);
        // 1 − σ(x) as σ(−x): no cancellation when h is near 1.
        let one_minus_h = sigmoid((sign * (g - k_rows)).mul_scalar(-self.beta));
        let weight = y.clone().mul_scalar(self.lambda_d) + y.neg().add_scalar(1.0).mul_scalar(self.lambda_u);
        let loss = (weight * one_minus_h).mean();
        LossOutput { loss: scalar_out(loss), metrics: vec![("kl_estimate", scalar_out(k))] }
    }
}
