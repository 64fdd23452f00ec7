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

/// `mapo generate`, `mapo tokenize` and `mapo forward transformer` on the SD3 folder, as
/// checks outside the repository call them (docs/design.md §2b).
#[test]
fn sd3_cli_matches_diffusers() {
    let f = open("sd3_pipeline.safetensors");
    let dir = std::env::temp_dir().join(format!("mapo-sd3-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = fixtures().join("tiny-sd35");
    let init = dir.join("init.safetensors");
    mapo::models::io::write_tensors(
        &init,
        vec![("latents".into(), f.get("cfg.init_latents").unwrap().to_data_any().unwrap())],
    )
    .unwrap();
    let latents = dir.join("latents.safetensors");
    let args = ["generate", "--model", model.to_str().unwrap(), "--prompt", "a photo of a cat, digits 42!"];
    let out = run_mapo(
        &[
            &args[..],
            &["--steps", "4", "--guidance", "5", "--width", "24", "--height", "32", "--max-sequence-length", "16"],
            &["--init-latents", init.to_str().unwrap(), "--save-latents", latents.to_str().unwrap()],
            &["--out", dir.join("img.png").to_str().unwrap(), "--device", &device_name()],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let device = device();
    let got = SafeTensorFiles::open_file(&latents).unwrap().float::<4>("latents", &device, DType::F32).unwrap();
    assert_close("generate", got, f.float::<4>("cfg.final_latents", &device, DType::F32).unwrap(), 1e-5);
    assert!(image::open(dir.join("img.png")).unwrap().width() == 24);

    let out =
        run_mapo(&["tokenize", "--model", model.to_str().unwrap(), "--prompt", "", "--max-sequence-length", "16"]);
    let ids: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: Vec<i64> = ints(&f, "cfg.negative_input_ids_3");
    assert_eq!(ids["input_ids_3"], serde_json::json!(want));
    assert_eq!(ids["input_ids_2"], serde_json::json!(ints(&f, "cfg.negative_input_ids_2")));

    // SD3-only options are refused on SDXL folders and the other way round.
    let sdxl = fixtures().join("tiny-sdxl");
    let out =
        mapo_quiet(&["generate", "--model", sdxl.to_str().unwrap(), "--prompt", "x", "--no-t5", "--out", "/dev/null"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--no-t5 applies to SD3"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn forward_transformer_matches_diffusers() {
    let cases = open("sd3_transformer_cases.safetensors");
    let dir = std::env::temp_dir().join(format!("mapo-sd3-fwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    write_sd35_case0(&inp);
    let model = fixtures().join("tiny-sd35");
    let r = forward_transformer(&model, &inp, &out, None);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let device = device();
    let got = SafeTensorFiles::open_file(&out).unwrap().float::<4>("sample", &device, DType::F32).unwrap();
    assert_close("forward transformer", got, cases.float::<4>("sd35.case0.sample", &device, DType::F32).unwrap(), 1e-5);

    // A wrong width names the tensor and what was expected.
    let bad = dir.join("bad.safetensors");
    std::fs::copy(&inp, &bad).unwrap();
    rewrite_tensor(&bad, "encoder_hidden_states", |_| {
        burn::tensor::TensorData::new(vec![0f32; 2 * 7 * 23], [2, 7, 23])
    });
    let r = forward_transformer(&model, &bad, &out, None);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("encoder_hidden_states: expected shape [2, _, 24]"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A PEFT LoRA on the SD3.5 transformer as diffusers saves it (`transformer.*` keys, the
/// adapter config in `lora_adapter_metadata` with a per-layer rank/alpha pattern, adapters on
/// the MMDiT-X `attn2` projections too), folded by `forward transformer --lora`, against
/// diffusers' `load_lora_weights` (tools/golden/make_sd3_lora.py). Tolerance 1e-5.
#[test]
fn sd3_peft_lora_matches_diffusers() {
    let expected = open("lora/sd35_expected.safetensors");
    let dir = std::env::temp_dir().join(format!("mapo-sd3-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    write_sd35_case0(&inp);
    let model = fixtures().join("tiny-sd35");
    let lora = fixtures().join("lora/sd35_peft.safetensors");
    let forward = |lora_file: &std::path::Path| forward_transformer(&model, &inp, &out, Some(lora_file));
    let r = forward(&lora);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let device = device();
    let got = SafeTensorFiles::open_file(&out).unwrap().float::<4>("sample", &device, DType::F32).unwrap();
    assert_close("sd35 + peft lora", got, expected.float::<4>("peft", &device, DType::F32).unwrap(), 1e-5);

    // A UNet's LoRA on the transformer is refused by name.
    let r = forward(&fixtures().join("lora/peft.safetensors"));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("a peft LoRA of a UNet"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mapo forward text-encoder-3` (T5) and `text-encoder` (CLIP L with projection) on the SD3
/// folder, as checks outside the repository call them: T5's states are the last 16 rows of
/// the pipeline's prompt embeddings, CLIP L's penultimate states their first 8 columns of
/// the first 77 rows, its `text_embeds` the first 8 of the pooled embedding. 1e-5.
#[test]
fn sd3_text_encoders_via_the_cli_match_diffusers() {
    let f = open("sd3_pipeline.safetensors");
    let device = device();
    let dir = std::env::temp_dir().join(format!("mapo-sd3-te-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = fixtures().join("tiny-sd35");
    let embeds = f.float::<3>("cfg.prompt_embeds", &device, DType::F32).unwrap();
    let pooled = f.float::<2>("cfg.pooled_prompt_embeds", &device, DType::F32).unwrap();
    let run = |component: &str, ids: &str| {
        let (inp, out) =
            (dir.join(format!("{component}-in.safetensors")), dir.join(format!("{component}.safetensors")));
        let data = f.get(ids).unwrap().to_data_any().unwrap();
        mapo::models::io::write_tensors(&inp, vec![("input_ids".into(), data)]).unwrap();
        let args = ["forward", component, "--model", model.to_str().unwrap(), "--device", &device_name()];
        run_mapo(&[&args[..], &["--inputs", inp.to_str().unwrap(), "--out", out.to_str().unwrap()]].concat());
        SafeTensorFiles::open_file(&out).unwrap()
    };
    let t5 = run("text-encoder-3", "cfg.input_ids_3");
    let got = t5.float::<3>("last_hidden_state", &device, DType::F32).unwrap();
    assert_close("text-encoder-3", got, embeds.clone().narrow(1, 77, 16), 1e-5);
    let clip = run("text-encoder", "cfg.input_ids");
    let hidden = clip.float::<3>("hidden_states", &device, DType::F32).unwrap();
    assert_close("text-encoder hidden_states", hidden, embeds.narrow(1, 0, 77).narrow(2, 0, 8), 1e-5);
    let text_embeds = clip.float::<2>("text_embeds", &device, DType::F32).unwrap();
    assert_close("text-encoder text_embeds", text_embeds, pooled.narrow(1, 0, 8), 1e-5);
    std::fs::remove_dir_all(&dir).unwrap();
}
