//! MaPO's per-sample odds f(x) = x / (eˣ − 1) and the margin's difference f(a) − f(b), in
//! forms that stay accurate in f32.
//!
//! Why: at realistic errors (x = s·L ≈ 0.05, pair gaps ≈ 1e-3) f(a) and f(b) agree to three
//! digits, so subtracting them loses three of f32's seven; the ×1000 margin then shows it.
//! Here the difference is (b − a)·f(a)·f(b)·h[a, b], where h(x) = (eˣ − 1)/x = 1/f(x) and
//! h[a, b] = (h(b) − h(a))/(b − a) is its divided difference, computed as a sum of positive
//! terms (errors are ≥ 0): no nearly equal numbers are ever subtracted, and b − a is formed
//! from the errors themselves. f64 is then an accuracy bonus, not a requirement.
//!
//! Every branch is evaluated on clamped inputs and selected with `mask_where`, so that the
//! unselected branches never produce inf/NaN gradients.

use burn::tensor::Tensor;

/// Below this, series; above, closed forms (whose cancellation is then at most ~10×).
const SERIES_BELOW: f64 = 1.0;
/// Terms of each series: the first left out is < 3e-15 relative at x = 1 (f64-exact).
const TERMS: i32 = 18;
/// eˣ stays finite in f32 up to x ≈ 88; f(80) ≈ 1e-33, indistinguishable from 0.
const EXP_MAX: f64 = 80.0;

fn factorial(n: i32) -> f64 {
    (1..=n).map(f64::from).product()
}

/// Σ_{k=1..TERMS} coef(k)·xᵏ by Horner's rule.
fn power_series(x: Tensor<1>, coef: impl Fn(i32) -> f64) -> Tensor<1> {
    let mut acc = x.zeros_like().add_scalar(coef(TERMS));
    for k in (1..TERMS).rev() {
        acc = acc * x.clone() + coef(k);
    }
    acc * x
}

/// h(x) − 1 = (eˣ − 1 − x)/x = Σ_{k≥1} xᵏ/(k+1)!, for x ≥ 0.
fn h_minus_1(x: Tensor<1>) -> Tensor<1> {
    let small = x.clone().lower_elem(SERIES_BELOW);
    let series = power_series(x.clone().clamp_max(SERIES_BELOW), |k| 1.0 / factorial(k + 1));
    let xd = x.clamp(SERIES_BELOW, EXP_MAX);
    let direct = (xd.clone().exp() - xd.clone() - 1.0) / xd;
    direct.mask_where(small, series)
}

/// q(x) = eˣ − h(x) = Σ_{k≥1} k·xᵏ/(k+1)!, for x ≥ 0.
fn exp_minus_h(x: Tensor<1>) -> Tensor<1> {
    let small = x.clone().lower_elem(SERIES_BELOW);
    let series = power_series(x.clone().clamp_max(SERIES_BELOW), |k| f64::from(k) / factorial(k + 1));
    let xd = x.clamp(SERIES_BELOW, EXP_MAX);
    let direct = (xd.clone().exp() * (xd.clone() - 1.0) + 1.0) / xd;
    direct.mask_where(small, series)
}

/// f(x) = x / (eˣ − 1) = 1 / h(x), with f(0) = 1, for x ≥ 0.
pub fn odds(x: Tensor<1>) -> Tensor<1> {
    h_minus_1(x).add_scalar(1.0).recip()
}

/// h[lo, hi] for 0 ≤ lo ≤ hi < 1: Σ_{k≥1} c_k/(k+1)! with c_k = Σ_j loʲ·hi^(k−1−j), i.e.
/// c_1 = 1, c_k = hi·c_{k−1} + lo^(k−1).
fn divided_difference_series(lo: Tensor<1>, hi: Tensor<1>) -> Tensor<1> {
    let mut c = lo.ones_like();
    let mut lo_pow = lo.ones_like();
    let mut sum = c.clone().mul_scalar(1.0 / factorial(2));
    for k in 2..=TERMS {
        lo_pow = lo_pow * lo.clone();
        c = c * hi.clone() + lo_pow.clone();
        sum = sum + c.clone().mul_scalar(1.0 / factorial(k + 1));
    }
    sum
}

/// f(a) − f(b) for a, b ≥ 0, given `b_minus_a` = b − a formed before any scaling.
pub fn odds_difference(a: Tensor<1>, b: Tensor<1>, b_minus_a: Tensor<1>) -> Tensor<1> {
    let lo = a.clone().min_pair(b.clone());
    let hi = a.clone().max_pair(b.clone());
    let gap = b_minus_a.clone().abs();
    let (fa, fb) = (odds(a), odds(b));

    // hi < 1: the series of the divided difference, all terms positive.
    let dd_small = divided_difference_series(lo.clone().clamp_max(SERIES_BELOW), hi.clone().clamp_max(SERIES_BELOW));
    // hi ≥ 1: from e^hi = e^lo·e^gap, h(hi) − h(lo) = (gap/hi)·(e^lo·(h(gap) − 1) + q(lo)),
    // both terms ≥ 0; so h[lo, hi] is that bracket over hi.
    let lo_c = lo.clamp_max(EXP_MAX);
    let bracket = lo_c.clone().exp() * h_minus_1(gap.clone().clamp_max(SERIES_BELOW)) + exp_minus_h(lo_c);
    let dd_mid = bracket / hi.clone().clamp_min(SERIES_BELOW);
    let dd = dd_mid.mask_where(hi.lower_elem(SERIES_BELOW), dd_small);
    let close = b_minus_a * fa.clone() * fb.clone() * dd;

    // Gaps ≥ 1: f(a) and f(b) differ in their first digit; subtracting is exact enough.
    let far = gap.greater_equal_elem(SERIES_BELOW);
    close.mask_where(far, fa - fb)
}
