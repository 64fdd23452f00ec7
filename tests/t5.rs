//! The T5 v1.1 encoder (SD3's and FLUX's third text encoder) against transformers
//! (tools/golden/make_t5.py: a tiny gated-GELU T5EncoderModel with non-trivial random
//! weights and a tiny Unigram tokenizer.json in T5's pipeline): token ids through the
//! `tokenizers` crate as SD3's pipeline pads and truncates them, `last_hidden_state` for
//! each prompt, and the relative-position buckets at the real sizes.

mod common;

use burn::tensor::{DType, Tensor};
use common::*;
use mapo::models::t5::tokenizer::T5Tokenizer;
use mapo::models::t5::{T5EncoderModel, relative_position_bucket};

#[test]
fn token_ids_match_transformers() {
    let prompts: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("t5_prompts.json")).unwrap()).unwrap();
    let tok = T5Tokenizer::from_dir(&fixtures().join("tiny-t5")).unwrap();
    let cases = open("t5_cases.safetensors");
    for (k, prompt) in prompts.iter().enumerate() {
        let want = to_vec_i64(&cases, &format!("ids.{k}"));
        assert_eq!(tok.encode(prompt, 16).unwrap(), want, "{prompt:?}");
    }
}

fn to_vec_i64(f: &mapo::models::io::SafeTensorFiles, name: &str) -> Vec<i64> {
    f.get(name).unwrap().to_data_any().unwrap().convert::<i64>().try_to_vec::<i64>().unwrap()
}

/// Hidden states within 5e-5 of transformers' (absolute, on values of magnitude ~1; measured
/// at most 1.5e-5 on flex and 2.6e-5 on wgpu/lavapipe: the std-0.5 weights make attention
/// peaked, so float order differences show a little).
#[test]
fn hidden_states_match_transformers() {
    let device = device();
    let (model, _) = T5EncoderModel::from_dir(&fixtures().join("tiny-t5"), &device, DType::F32).unwrap();
    let cases = open("t5_cases.safetensors");
    for k in 0..7 {
        let ids = cases.int::<2>(&format!("ids.{k}"), &device).unwrap();
        let want: Tensor<3> = cases.float(&format!("hidden.{k}"), &device, DType::F32).unwrap();
        let got = model.forward(ids);
        let diff = (got - want).abs().max().into_scalar::<f32>();
        eprintln!("case {k}: max |diff| {diff:.2e}");
        assert!(diff < 5e-5, "case {k}: max |diff| {diff}");
    }
}

#[test]
fn relative_position_buckets_match_transformers() {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("t5_buckets.json")).unwrap()).unwrap();
    for (r, b) in v["relative"].as_array().unwrap().iter().zip(v["bucket"].as_array().unwrap()) {
        let r = r.as_i64().unwrap();
        assert_eq!(relative_position_bucket(r, 32, 128) as i64, b.as_i64().unwrap(), "relative position {r}");
    }
}
