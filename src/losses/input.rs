//! What a loss sees: per-row errors of the policy (and of the reference), each row's label
//! and timestep, and the predictions themselves for the methods that ask for them.

use burn::tensor::{DType, Device, Tensor, TensorData};

use super::{Errors, per_sample_errors_in};

/// What a method reads. The training step runs and keeps only what is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The rejected image of each pair goes through the model (false: chosen rows only).
    pub rejected: bool,
    /// A frozen reference model's errors.
    pub reference: bool,
    /// The predictions and the target themselves (and the reference's prediction when
    /// `reference`), not only their per-row errors.
    pub predictions: bool,
    /// Rows must come as chosen/rejected pairs; false: any rows with a binary label.
    pub pairs: bool,
}

impl Needs {
    /// A pair method that compares chosen with rejected rows of the policy only.
    pub const PAIRS: Needs = Needs { rejected: true, reference: false, predictions: false, pairs: true };

    /// How the rows of pair data are laid out for this method.
    pub fn pair_layout(&self) -> Layout {
        if self.rejected { Layout::Pairs } else { Layout::ChosenOnly }
    }
}

/// The order of the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `[chosen B; rejected B]`: row i and row B + i are one pair (same noise and timestep).
    Pairs,
    /// The chosen image of each pair only.
    ChosenOnly,
    /// Independent rows, each with its label (true = desirable).
    Unpaired(Vec<bool>),
}

/// The tensors themselves, for methods that work on predictions (DSPO).
#[derive(Debug, Clone)]
pub struct Predictions {
    /// [N,C,h,w] the policy's prediction.
    pub policy: Tensor<4>,
    /// [N,C,h,w] the target (ε).
    pub target: Tensor<4>,
    /// [N,C,h,w] the reference's prediction (detached), when the method uses a reference.
    pub reference: Option<Tensor<4>>,
}

#[derive(Debug, Clone)]
pub struct LossInput {
    /// [N] per-row errors `mean over (C,h,w) of (ε_θ − ε)²` of the policy.
    pub policy: Tensor<1>,
    /// [N] the reference's errors (no gradient), when the method uses a reference.
    pub reference: Option<Tensor<1>>,
    /// [N] 1 for a chosen (desirable) row, 0 for a rejected (undesirable) one.
    pub labels: Tensor<1>,
    pub layout: Layout,
    /// The timestep of each row.
    pub timesteps: Vec<i64>,
    pub predictions: Option<Predictions>,
}

fn label_tensor(labels: Vec<f32>, device: &Device, dtype: DType) -> Tensor<1> {
    let n = labels.len();
    Tensor::<1>::from_data(TensorData::new(labels, [n]), device).cast(dtype)
}

impl LossInput {
    /// From the policy's prediction and the target, rows in `layout`; the predictions are
    /// kept only when `keep_predictions`.
    pub fn new(
        pred: Tensor<4>,
        target: Tensor<4>,
        layout: Layout,
        timesteps: Vec<i64>,
        keep_predictions: bool,
        dtype: DType,
    ) -> Self {
        let rows = pred.dims()[0];
        let policy = per_sample_errors_in(pred.clone(), target.clone(), dtype);
        let labels: Vec<f32> = match &layout {
            Layout::Pairs => (0..rows).map(|i| if i < rows / 2 { 1.0 } else { 0.0 }).collect(),
            Layout::ChosenOnly => vec![1.0; rows],
            Layout::Unpaired(l) => l.iter().map(|&d| if d { 1.0 } else { 0.0 }).collect(),
        };
        let labels = label_tensor(labels, &policy.device(), dtype);
        let predictions = keep_predictions.then(|| Predictions { policy: pred, target, reference: None });
        Self { policy, reference: None, labels, layout, timesteps, predictions }
    }

    /// From pair data laid out `[chosen; rejected]` (as `mapo forward loss` takes it):
    /// only the chosen half when the method does not use rejected rows.
    pub fn from_pair_rows(
        pred: Tensor<4>,
        target: Tensor<4>,
        reference: Option<Tensor<4>>,
        needs: Needs,
        timesteps: Vec<i64>,
        dtype: DType,
    ) -> Self {
        let half = |t: Tensor<4>| {
            let rows = t.dims()[0];
            if needs.rejected { t } else { t.narrow(0, 0, rows / 2) }
        };
        let timesteps = if needs.rejected { timesteps } else { timesteps[..timesteps.len() / 2].to_vec() };
        let target = half(target);
        let input = Self::new(half(pred), target.clone(), needs.pair_layout(), timesteps, needs.predictions, dtype);
        match reference.filter(|_| needs.reference) {
            Some(r) => input.with_reference_prediction(half(r), target, dtype),
            None => input,
        }
    }

    /// Adds the reference's prediction (its errors, and the prediction when predictions are kept).
    pub fn with_reference_prediction(mut self, ref_pred: Tensor<4>, target: Tensor<4>, dtype: DType) -> Self {
        let ref_pred = ref_pred.detach();
        self.reference = Some(per_sample_errors_in(ref_pred.clone(), target, dtype).detach());
        if let Some(p) = self.predictions.as_mut() {
            p.reference = Some(ref_pred);
        }
        self
    }

    /// Adds the reference's per-row errors (cached before training).
    pub fn with_reference_errors(mut self, errors: Tensor<1>) -> Self {
        self.reference = Some(errors.cast(self.policy.dtype()).detach());
        self
    }

    /// Policy and reference errors as pairs (tests and the reference cache).
    pub fn from_errors(policy: &Errors, reference: Option<&Errors>) -> Self {
        let cat = |e: &Errors| match &e.rejected {
            Some(r) => Tensor::cat(vec![e.chosen.clone(), r.clone()], 0),
            None => e.chosen.clone(),
        };
        let layout = if policy.rejected.is_some() { Layout::Pairs } else { Layout::ChosenOnly };
        let errors = cat(policy);
        let rows = errors.dims()[0];
        let labels: Vec<f32> =
            (0..rows).map(|i| if layout == Layout::Pairs && i >= rows / 2 { 0.0 } else { 1.0 }).collect();
        let labels = label_tensor(labels, &errors.device(), errors.dtype());
        Self {
            policy: errors,
            reference: reference.map(|r| cat(r).detach()),
            labels,
            layout,
            timesteps: Vec::new(),
            predictions: None,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.policy.dims()[0]
    }

    fn half(&self, t: &Tensor<1>, second: bool) -> Tensor<1> {
        let n = self.rows();
        match (&self.layout, second) {
            (Layout::Pairs, false) => t.clone().narrow(0, 0, n / 2),
            (Layout::Pairs, true) => t.clone().narrow(0, n / 2, n / 2),
            (Layout::ChosenOnly, false) => t.clone(),
            (layout, _) => {
                panic!("rows laid out {layout:?} have no {} half", if second { "rejected" } else { "chosen" })
            }
        }
    }

    /// [B] the policy's errors on the chosen images.
    pub fn chosen(&self) -> Tensor<1> {
        self.half(&self.policy, false)
    }

    /// [B] the policy's errors on the rejected images.
    pub fn rejected(&self) -> Tensor<1> {
        self.half(&self.policy, true)
    }

    fn reference_errors(&self) -> &Tensor<1> {
        self.reference.as_ref().expect("this method needs the reference model's errors")
    }

    /// [B] the reference's errors on the chosen images.
    pub fn ref_chosen(&self) -> Tensor<1> {
        self.half(self.reference_errors(), false)
    }

    /// [B] the reference's errors on the rejected images.
    pub fn ref_rejected(&self) -> Tensor<1> {
        self.half(self.reference_errors(), true)
    }

    /// The reference's errors over all rows.
    pub fn reference(&self) -> Tensor<1> {
        self.reference_errors().clone()
    }

    pub fn predictions(&self) -> &Predictions {
        self.predictions.as_ref().expect("this method needs the predictions (Needs::predictions)")
    }
}
