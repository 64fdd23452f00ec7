//! Supervised fine-tuning on the chosen images: the plain diffusion loss.

use anyhow::Result;

use super::{LossInput, LossOutput, Needs, Params, PreferenceLoss, scalar_out};

#[derive(Debug)]
pub struct Sft;

pub(super) fn build(_: &mut Params) -> Result<(Box<dyn PreferenceLoss>, &'static [&'static str])> {
    Ok((Box::new(Sft), &[]))
}

impl PreferenceLoss for Sft {
    fn needs(&self) -> Needs {
        Needs { rejected: false, reference: false, predictions: false, pairs: true }
    }

    fn compute(&self, input: &LossInput) -> LossOutput {
        LossOutput { loss: scalar_out(input.chosen().mean()), metrics: vec![] }
    }
}
