//! MaPO (Hong et al. 2024): reference-free, margin-aware preference optimisation.

use anyhow::{Result, ensure};
use burn::tensor::Tensor;

use super::{Errors, LossOutput, Params, PreferenceLoss, log_sigmoid, scalar_out};

#[derive(Debug)]
pub struct Mapo {
    /// β weighting the margin term (0.1).
    pub beta: f64,
    /// s in f(L) = s·L / (exp(s·L) − 1) (0.5).
    pub snr_value: f64,
    /// T scaling the margin: the number of training timesteps (1000).
    pub num_train_timesteps: f64,
}

pub(super) fn build(p: &mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])> {
    let m = Mapo {
        beta: p.take("beta", 0.1),
        snr_value: p.take("snr_value", 0.5),
        num_train_timesteps: p.take("num_train_timesteps", 1000.0),
    };
    ensure!(m.snr_value > 0.0, "mapo: snr_value must be positive, got {}", m.snr_value);
    ensure!(m.num_train_timesteps > 0.0, "mapo: num_train_timesteps must be positive");
    Ok((Box::new(m), &["beta", "snr_value", "num_train_timesteps"]))
}

/// Below this x, x / (eˣ − 1) comes from its series: the direct form is 0/0 at x = 0, and
/// its gradient through an unselected branch would be NaN.
const SERIES_BELOW: f64 = 1e-2;

/// f(x) = x / (eˣ − 1), with f(0) = 1, for x ≥ 0.
fn odds(x: Tensor<1>) -> Tensor<1> {
    let small = x.clone().lower_elem(SERIES_BELOW);
    // 1 − x/2 + x²/12 − x⁴/720: the next term, x⁶/30240, is < 4e-17 below 1e-2.
    let xs = x.clone().clamp_max(SERIES_BELOW);
    let x2 = xs.clone().square();
    let series = x2.clone().square().mul_scalar(-1.0 / 720.0) + x2.mul_scalar(1.0 / 12.0) - xs.mul_scalar(0.5) + 1.0;
    let xd = x.clamp_min(SERIES_BELOW);
    let direct = xd.clone() / (xd.exp() - 1.0);
    direct.mask_where(small, series)
}

impl PreferenceLoss for Mapo {
    fn name(&self) -> &'static str {
        "mapo"
    }

    fn compute(&self, policy: &Errors, _: Option<&Errors>) -> LossOutput {
        let s = self.snr_value;
        let fw = odds(policy.chosen.clone().mul_scalar(s));
        let fl = odds(policy.rejected().clone().mul_scalar(s));
        let margin = (fw - fl).mul_scalar(self.num_train_timesteps);
        let chosen_loss = policy.chosen.clone().mean();
        let loss = chosen_loss.clone() - log_sigmoid(margin.clone()).mean().mul_scalar(self.beta);
        LossOutput {
            loss: scalar_out(loss),
            metrics: vec![
                ("chosen_loss", scalar_out(chosen_loss)),
                ("rejected_loss", scalar_out(policy.rejected().clone().mean())),
                ("margin", scalar_out(margin.mean())),
            ],
        }
    }
}
