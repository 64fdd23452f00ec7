//! MaPO (Hong et al. 2024): reference-free, margin-aware preference optimisation.

use anyhow::{Result, ensure};

use super::odds::odds_difference;
use super::{LossInput, LossOutput, Needs, Params, PreferenceLoss, log_sigmoid, scalar_out};

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

impl PreferenceLoss for Mapo {
    fn needs(&self) -> Needs {
        Needs::PAIRS
    }

    fn compute(&self, input: &LossInput) -> LossOutput {
        let s = self.snr_value;
        let (lw, ll) = (input.chosen(), input.rejected());
        // The gap is formed from the errors before scaling: it is exact when they are close.
        let gap = (ll.clone() - lw.clone()).mul_scalar(s);
        let margin =
            odds_difference(lw.clone().mul_scalar(s), ll.mul_scalar(s), gap).mul_scalar(self.num_train_timesteps);
        let loss = lw.mean() - log_sigmoid(margin.clone()).mean().mul_scalar(self.beta);
        LossOutput { loss: scalar_out(loss), metrics: vec![("margin", scalar_out(margin.mean()))] }
    }
}
