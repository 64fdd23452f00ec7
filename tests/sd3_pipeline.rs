//! The tiny SD3.5 pipeline (tests/fixtures/tiny-sd35: two CLIPs with projection, T5, the
//! MMDiT-X transformer, the 16-channel VAE, FlowMatchEuler with shift 3) against diffusers'
//! StableDiffusion3Pipeline (tools/golden/make_sd3_pipeline.py): token ids exactly, prompt
//! embeddings (CLIP penultimate states zero-padded to T5's width, then T5's) and pooled
//! embeddings within 1e-5, the sampler's σ and timesteps to f32 rounding, and the final
//! latents of a 4-step CFG generation, a 3-step generation without CFG and a run without
//! T5 within 1e-5 relative (measured 4.7e-7 at most on flex), then the VAE decode.

mod common;

use burn::tensor::{DType, Tensor};
use common::*;
use mapo::models::io::SafeTensorFiles;
use mapo::sample::sd3::Sd3Pipeline;

fn pipeline(with_t5: bool) -> Sd3Pipeline {
    let mut pipe = Sd3Pipeline::load(&fixtures().join("tiny-sd35"), None, with_t5, &device(), DType::F32).unwrap();
    pipe.prompts.max_sequence_length = 16;
    pipe
}

fn settings(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("sd3_pipeline.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()[case].clone()
}

fn ints(f: &SafeTensorFiles, name: &str) -> Vec<i64> {
    f.get(name).unwrap().to_data_any().unwrap().convert::<i64>().try_to_vec::<i64>().unwrap()
}

#[test]
fn sd3_prompt_encoding_matches_diffusers() {
    let device = device();
    let f = open("sd3_pipeline.safetensors");
    let pipe = pipeline(true);
    let prompt = settings("cfg")["prompt"].as_str().unwrap().to_string();
    let p = &pipe.prompts;
    assert_eq!(p.tokenizer.encode(&prompt), ints(&f, "cfg.input_ids"));
    assert_eq!(p.tokenizer_2.encode(&prompt), ints(&f, "cfg.input_ids_2"));
    assert_eq!(p.t5.as_ref().unwrap().0.encode(&prompt, 16).unwrap(), ints(&f, "cfg.input_ids_3"));
    assert_eq!(p.t5.as_ref().unwrap().0.encode("", 16).unwrap(), ints(&f, "cfg.negative_input_ids_3"));
    for (text, embeds, pooled) in [
        (prompt.as_str(), "cfg.prompt_embeds", "cfg.pooled_prompt_embeds"),
        ("", "cfg.negative_prompt_embeds", "cfg.negative_pooled_prompt_embeds"),
    ] {
        let (context, pooled_got) = p.encode(text).unwrap();
        assert_close(embeds, context, f.float::<3>(embeds, &device, DType::F32).unwrap(), 1e-5);
        assert_close(pooled, pooled_got, f.float::<2>(pooled, &device, DType::F32).unwrap(), 1e-5);
    }
}

#[test]
fn sd3_sampler_sigmas_match_diffusers() {
    let f = open("sd3_pipeline.safetensors");
    let pipe = pipeline(false);
    for (case, steps) in [("cfg", 4), ("long", 3)] {
        let s = pipe.scheduler.sampler(steps).unwrap();
        let want = |n: &str| f.get(&format!("{case}.{n}")).unwrap().to_data().unwrap().try_to_vec::<f32>().unwrap();
        for (got, want) in [(&s.sigmas, want("sigmas")), (&s.timesteps, want("timesteps"))] {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{case}: {got:?} vs {want:?}");
            }
        }
    }
}

#[test]
fn sd3_generation_matches_diffusers() {
    let device = device();
    let f = open("sd3_pipeline.safetensors");
    for (case, with_t5, init) in [("cfg", true, "cfg"), ("long", true, "long"), ("not5", false, "cfg")] {
        let s = settings(case);
        let pipe = pipeline(with_t5);
        let noise = f.float::<4>(&format!("{init}.init_latents"), &device, DType::F32).unwrap();
        let latents = pipe
            .generate_latents(
                s["prompt"].as_str().unwrap(),
                None,
                s["num_inference_steps"].as_u64().unwrap() as usize,
                s["guidance_scale"].as_f64().unwrap(),
                noise,
                &mut |_| {},
            )
            .unwrap();
        let want = f.float::<4>(&format!("{case}.final_latents"), &device, DType::F32).unwrap();
        assert_close(&format!("{case} final latents"), latents.clone(), want, 1e-5);
        if case == "cfg" {
            let image: Tensor<4> = pipe.decode(latents);
            assert_close("cfg image", image, f.float::<4>("cfg.image", &device, DType::F32).unwrap(), 1e-5);
        }
    }
}
