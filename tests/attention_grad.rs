//! The memory-efficient attention's forward and Q/K/V gradients against Burn's naive
//! attention under autodiff (materialised softmax), on random inputs of several shapes.
//! Tolerance: 1e-5 of each tensor's largest magnitude (f32).

mod common;

use burn::tensor::{Tensor, TensorData};
use mapo::models::attention::{efficient, naive};
use mapo::sample::noise::gaussian;

use common::{device, rel_err, to_vec};

struct Case {
    b: usize,
    h: usize,
    lq: usize,
    lk: usize,
    d: usize,
    causal: bool,
    rows: usize,
}

fn random(seed: u64, shape: [usize; 4], scale: f32) -> Vec<f32> {
    gaussian(seed, shape.iter().product()).into_iter().map(|x| x * scale).collect()
}

/// Output and the gradients of Σ out·w with respect to q, k and v.
fn run(c: &Case, efficient_path: bool) -> [Vec<f32>; 4] {
    run_in(c, efficient_path, burn::tensor::DType::F32)
}

fn run_in(c: &Case, efficient_path: bool, dtype: burn::tensor::DType) -> [Vec<f32>; 4] {
    let dev = device().autodiff();
    // Scores of a few units, as trained attention has (a flat softmax would hide errors).
    let make = |seed, l| {
        Tensor::<4>::from_data(TensorData::new(random(seed, [c.b, c.h, l, c.d], 1.5), [c.b, c.h, l, c.d]), &dev)
            .cast(dtype)
            .require_grad()
    };
    let (q, k, v) = (make(1, c.lq), make(2, c.lk), make(3, c.lk));
    let w = Tensor::<4>::from_data(TensorData::new(random(4, [c.b, c.h, c.lq, c.d], 1.0), [c.b, c.h, c.lq, c.d]), &dev)
        .cast(dtype);
    let out = if efficient_path {
        efficient(q.clone(), k.clone(), v.clone(), c.causal, c.rows)
    } else {
        naive(q.clone(), k.clone(), v.clone(), c.causal)
    };
    let grads = (out.clone() * w).sum().backward();
    let g = |t: &Tensor<4>| to_vec(t.grad(&grads).expect("gradient").cast(burn::tensor::DType::F32));
    [to_vec(out), g(&q), g(&k), g(&v)]
}

fn check(c: Case) {
    let want = run(&c, false);
    let got = run(&c, true);
    for (name, (g, w)) in ["out", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
        let err = rel_err(g, w);
        assert!(
            err <= 1e-5,
            "{name}: relative error {err:.2e} > 1e-5 (b {} h {} lq {} lk {} d {} causal {} rows {})",
            c.b,
            c.h,
            c.lq,
            c.lk,
            c.d,
            c.causal,
            c.rows
        );
    }
}

#[test]
fn one_head_odd_tokens_partial_blocks() {
    check(Case { b: 1, h: 1, lq: 37, lk: 37, d: 8, causal: false, rows: 16 });
}

#[test]
fn cross_attention_77_tokens_batch_two() {
    check(Case { b: 2, h: 3, lq: 50, lk: 77, d: 16, causal: false, rows: 7 });
}

#[test]
fn causal_text_attention() {
    check(Case { b: 2, h: 2, lq: 77, lk: 77, d: 8, causal: true, rows: 10 });
}

#[test]
fn single_block_and_one_row_blocks() {
    check(Case { b: 3, h: 2, lq: 64, lk: 64, d: 4, causal: false, rows: 64 });
    check(Case { b: 1, h: 2, lq: 9, lk: 5, d: 4, causal: false, rows: 1 });
}

/// Without tracked inputs the op is Burn's own attention: same numbers, no graph.
#[test]
fn untracked_inputs_take_the_plain_path() {
    let dev = device().autodiff();
    let shape = [1, 2, 20, 8];
    let t = |s| Tensor::<4>::from_data(TensorData::new(random(s, shape, 1.0), shape), &dev);
    let got = to_vec(efficient(t(1), t(2), t(3), false, 4));
    let want = to_vec(naive(t(1), t(2), t(3), false));
    assert!(rel_err(&got, &want) <= 1e-6);
}

/// bf16 inputs (mixed-precision training): against the f32 result the efficient path is as
/// close as Burn's naive bf16 attention (within 2×; measured 6.5e-3..1.5e-2 vs 7.4e-3..1.3e-2,
/// both dominated by rounding the inputs to bf16). Flex only: WGSL has no bf16.
#[test]
fn bf16_is_as_close_to_f32_as_the_naive_path() {
    if common::device_name() != "flex" {
        return;
    }
    let c = Case { b: 2, h: 2, lq: 40, lk: 77, d: 16, causal: false, rows: 16 };
    let exact = run(&c, false);
    let naive = run_in(&c, false, burn::tensor::DType::BF16);
    let efficient = run_in(&c, true, burn::tensor::DType::BF16);
    for (i, name) in ["out", "dq", "dk", "dv"].iter().enumerate() {
        let (e, n) = (rel_err(&efficient[i], &exact[i]), rel_err(&naive[i], &exact[i]));
        eprintln!("{name}: bf16 efficient {e:.2e}, bf16 naive {n:.2e}");
        assert!(e <= 2.0 * n + 1e-3 && e < 5e-2, "{name}: bf16 efficient {e:.2e} vs naive {n:.2e}");
    }
}
