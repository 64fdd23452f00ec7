//! What every method logs, whatever it optimises: the mean errors of chosen and rejected
//! rows (for the policy and the reference), the implicit accuracy, and for reference methods
//! the reward margin. Successors of Diffusion-DPO document a failure where the margin grows
//! while the chosen images' error rises too; these make it visible for every method.

use burn::tensor::Tensor;

use super::{Layout, LossInput, scalar_out};

/// Share of positive entries, a tie (exactly 0) counting as half.
fn share_positive(x: Tensor<1>) -> Tensor<1> {
    (x.clone().greater_elem(0.0).float() + x.equal_elem(0.0).float().mul_scalar(0.5)).mean()
}

/// Mean of `x` over the rows whose `weight` is 1.
fn weighted_mean(x: Tensor<1>, weight: Tensor<1>) -> Tensor<1> {
    (x * weight.clone()).sum() / weight.sum()
}

/// Metrics, each [1] f32:
/// - `chosen_loss`, `rejected_loss`: mean policy error of chosen / rejected rows;
/// - `ref_chosen_loss`, `ref_rejected_loss`: the same for the reference;
/// - `implicit_acc`: share of pairs ranked right, `(L_w − L_l) − (R_w − R_l) < 0` (without a
///   reference `L_w < L_l`); for unpaired rows, share with `R − L` of the label's sign;
/// - `reward_margin`: mean of `(R_w − L_w) − (R_l − L_l)` (unscaled by β, so that methods compare);
/// - `chosen_vs_ref`, `rejected_vs_ref`: mean `L − R` of chosen / rejected rows, how far the
///   policy's errors have moved from the reference's on the very same noise and timesteps.
pub fn common(input: &LossInput) -> Vec<(&'static str, Tensor<1>)> {
    let mut out = Vec::new();
    match &input.layout {
        Layout::ChosenOnly => {
            out.push(("chosen_loss", scalar_out(input.chosen().mean())));
            if input.reference.is_some() {
                out.push(("ref_chosen_loss", scalar_out(input.ref_chosen().mean())));
            }
        }
        Layout::Pairs => {
            let policy_gap = input.chosen() - input.rejected();
            out.push(("chosen_loss", scalar_out(input.chosen().mean())));
            out.push(("rejected_loss", scalar_out(input.rejected().mean())));
            match &input.reference {
                Some(_) => {
                    let gap = policy_gap - (input.ref_chosen() - input.ref_rejected());
                    out.push(("implicit_acc", scalar_out(share_positive(gap.clone().neg()))));
                    out.push(("ref_chosen_loss", scalar_out(input.ref_chosen().mean())));
                    out.push(("ref_rejected_loss", scalar_out(input.ref_rejected().mean())));
                    out.push(("reward_margin", scalar_out(gap.mean().neg())));
                    // Same noise and timesteps as the policy's: the drift without the batch's noise.
                    out.push(("chosen_vs_ref", scalar_out((input.chosen() - input.ref_chosen()).mean())));
                    out.push(("rejected_vs_ref", scalar_out((input.rejected() - input.ref_rejected()).mean())));
                }
                None => out.push(("implicit_acc", scalar_out(share_positive(policy_gap.neg())))),
            }
        }
        Layout::Unpaired(labels) => {
            let y = input.labels.clone();
            let not_y = y.clone().neg().add_scalar(1.0);
            let (any_d, any_u) = (labels.iter().any(|&d| d), labels.iter().any(|&d| !d));
            let l = input.policy.clone();
            if any_d {
                out.push(("chosen_loss", scalar_out(weighted_mean(l.clone(), y.clone()))));
            }
            if any_u {
                out.push(("rejected_loss", scalar_out(weighted_mean(l.clone(), not_y.clone()))));
            }
            if let Some(r) = &input.reference {
                let sign = y.clone().mul_scalar(2.0).sub_scalar(1.0);
                out.push(("implicit_acc", scalar_out(share_positive((r.clone() - l) * sign))));
                if any_d {
                    out.push(("ref_chosen_loss", scalar_out(weighted_mean(r.clone(), y))));
                }
                if any_u {
                    out.push(("ref_rejected_loss", scalar_out(weighted_mean(r.clone(), not_y))));
                }
            }
        }
    }
    out
}
