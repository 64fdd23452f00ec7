//! Supervised fine-tuning on the chosen images: the plain diffusion loss.

use anyhow::Result;

use super::{Errors, LossOutput, Params, PreferenceLoss, scalar_out};

#[derive(Debug)]
pub struct Sft;

pub(super) fn build(_: &mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])> {
    Ok((Box::new(Sft), &[]))
}

impl PreferenceLoss for Sft {
    fn name(&self) -> &'static str {
        "sft"
    }

    fn uses_rejected(&self) -> bool {
        false
    }

    fn compute(&self, policy: &Errors, _: Option<&Errors>) -> LossOutput {
        let loss = policy.chosen.clone().mean();
        LossOutput { loss: scalar_out(loss.clone()), metrics: vec![("chosen_loss", scalar_out(loss))] }
    }
}
