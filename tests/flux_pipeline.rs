//! The tiny FLUX.1 pipelines (tests/fixtures/tiny-flux-dev with guidance embedded and
//! dynamic shifting, tiny-flux-schnell with neither: CLIP L's pooled output, T5, the
//! transformer, the 16-channel VAE) against diffusers' FluxPipeline
//! (tools/golden/make_flux_pipeline.py): token ids exactly, text encoders and prompt
//! embeddings within 1e-5, mu and the σ schedule to f32 rounding, the final latents of 4-,
//! 3- (true CFG) and 2-step generations within 1e-5 relative, the decoded image; then the
//! CLI as checks outside the repository call it (§2b).

mod common;

use burn::tensor::{DType, Int, Tensor, TensorData};
use common::*;
use mapo::models::io::SafeTensorFiles;
use mapo::sample::flux::FluxPipeline;

fn pipeline(variant: &str) -> FluxPipeline {
    let dir = fixtures().join(format!("tiny-flux-{variant}"));
    let mut pipe = FluxPipeline::load(&dir, None, &device(), DType::F32).unwrap();
    pipe.prompts.max_sequence_length = 16;
    pipe
}

fn settings(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("flux_pipeline.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()[case].clone()
}

fn ints(f: &SafeTensorFiles, name: &str) -> Vec<i64> {
    f.get(name).unwrap().to_data_any().unwrap().convert::<i64>().try_to_vec::<i64>().unwrap()
}

fn floats(f: &SafeTensorFiles, name: &str) -> Vec<f32> {
    f.get(name).unwrap().to_data().unwrap().try_to_vec::<f32>().unwrap()
}

#[test]
fn flux_text_encoders_match_transformers() {
    let device = device();
    let f = open("flux_pipeline.safetensors");
    let pipe = pipeline("dev");
    let p = &pipe.prompts;
    let prompts = settings("text")["prompts"].clone();
    for (i, prompt) in prompts.as_array().unwrap().iter().enumerate() {
        let prompt = prompt.as_str().unwrap();
        assert_eq!(p.tokenizer.encode(prompt), ints(&f, "text.input_ids")[i * 77..(i + 1) * 77]);
        assert_eq!(p.tokenizer_2.encode(prompt, 16).unwrap(), ints(&f, "t5.input_ids")[i * 16..(i + 1) * 16]);
    }
    let ids = |name: &str, n: usize| Tensor::<2, Int>::from_data(TensorData::new(ints(&f, name), [2, n]), &device);
    let out = p.text_encoder.forward(ids("text.input_ids", 77));
    let want = |n: &str| f.float::<3>(n, &device, DType::F32).unwrap();
    assert_close("CLIP penultimate", out.penultimate, want("text.hidden_states"), 1e-5);
    assert_close("CLIP last_hidden_state", out.last_hidden_state, want("text.last_hidden_state"), 1e-5);
    let pooled = f.float::<2>("text.pooler_output", &device, DType::F32).unwrap();
    assert_close("CLIP pooler_output", out.pooled, pooled, 1e-5);
    let t5 = p.text_encoder_2.forward(ids("t5.input_ids", 16));
    assert_close("T5", t5, want("t5.last_hidden_state"), 1e-5);
}

#[test]
fn flux_prompt_encoding_matches_diffusers() {
    let device = device();
    let f = open("flux_pipeline.safetensors");
    let pipe = pipeline("dev");
    let prompt = settings("dev")["prompt"].as_str().unwrap().to_string();
    assert_eq!(pipe.prompts.tokenizer.encode(&prompt), ints(&f, "dev.input_ids"));
    assert_eq!(pipe.prompts.tokenizer_2.encode(&prompt, 16).unwrap(), ints(&f, "dev.input_ids_2"));
    let (context, pooled) = pipe.prompts.encode(&prompt).unwrap();
    assert_close("prompt_embeds", context, f.float::<3>("dev.prompt_embeds", &device, DType::F32).unwrap(), 1e-5);
    let want = f.float::<2>("dev.pooled_prompt_embeds", &device, DType::F32).unwrap();
    assert_close("pooled_prompt_embeds", pooled, want, 1e-5);
    let (neg, neg_pooled) = pipe.prompts.encode("blurry").unwrap();
    let want = |n: &str| f.float::<3>(n, &device, DType::F32).unwrap();
    assert_close("negative_prompt_embeds", neg, want("dev_cfg.negative_prompt_embeds"), 1e-5);
    let want = f.float::<2>("dev_cfg.negative_pooled_prompt_embeds", &device, DType::F32).unwrap();
    assert_close("negative_pooled_prompt_embeds", neg_pooled, want, 1e-5);
}

/// mu from the packed token count, and σ / timesteps exactly as the scheduler's f32
/// arithmetic gives them (dynamic shifting for [dev], the static shift 1 for [schnell]).
#[test]
fn flux_sampler_sigmas_match_diffusers() {
    let f = open("flux_pipeline.safetensors");
    for (case, variant) in [("dev", "dev"), ("dev_cfg", "dev"), ("dev_long", "dev"), ("schnell", "schnell")] {
        let s = settings(case);
        let pipe = pipeline(variant);
        let tokens = s["image_seq_len"].as_u64().unwrap() as usize;
        assert!((pipe.scheduler.mu(tokens) - s["mu"].as_f64().unwrap()).abs() < 1e-15, "{case}: mu");
        let steps = s["num_inference_steps"].as_u64().unwrap() as usize;
        let sampler = pipe.scheduler.flux_sampler(steps, tokens).unwrap();
        assert_eq!(sampler.sigmas, floats(&f, &format!("{case}.sigmas")), "{case}: sigmas");
        assert_eq!(sampler.timesteps, floats(&f, &format!("{case}.timesteps")), "{case}: timesteps");
    }
}

#[test]
fn flux_generation_matches_diffusers() {
    let device = device();
    let f = open("flux_pipeline.safetensors");
    for (case, variant) in [("dev", "dev"), ("dev_cfg", "dev"), ("dev_long", "dev"), ("schnell", "schnell")] {
        let s = settings(case);
        let pipe = pipeline(variant);
        let noise = f.float::<4>(&format!("{case}.init_latents"), &device, DType::F32).unwrap();
        let latents = pipe
            .generate_latents(
                s["prompt"].as_str().unwrap(),
                s["negative_prompt"].as_str(),
                s["num_inference_steps"].as_u64().unwrap() as usize,
                s["guidance_scale"].as_f64().unwrap(),
                s["true_cfg_scale"].as_f64().unwrap(),
                noise,
                &mut |_| {},
            )
            .unwrap();
        let want = f.float::<4>(&format!("{case}.final_latents"), &device, DType::F32).unwrap();
        assert_close(&format!("{case} final latents"), latents.clone(), want, 1e-5);
        if case == "dev" {
            let image: Tensor<4> = pipe.decode(latents);
            assert_close("dev image", image, f.float::<4>("dev.image", &device, DType::F32).unwrap(), 1e-5);
        }
    }
}

fn write(path: &std::path::Path, tensors: Vec<(&str, TensorData)>) {
    mapo::models::io::write_tensors(path, tensors.into_iter().map(|(n, t)| (n.to_string(), t)).collect()).unwrap();
}

/// `mapo generate` (true CFG, unpacked `--init-latents` / `--save-latents`), `mapo tokenize`,
/// `mapo forward text-encoder` (`pooler_output`) and `text-encoder-2` (T5) on the FLUX folder.
#[test]
fn flux_cli_matches_diffusers() {
    let f = open("flux_pipeline.safetensors");
    let dir = std::env::temp_dir().join(format!("mapo-flux-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = fixtures().join("tiny-flux-dev");
    let m = model.to_str().unwrap();
    let init = dir.join("init.safetensors");
    write(&init, vec![("latents", f.get("dev_cfg.init_latents").unwrap().to_data_any().unwrap())]);
    let latents = dir.join("latents.safetensors");
    let s = settings("dev_cfg");
    let out = run_mapo(
        &[
            &["generate", "--model", m, "--prompt", s["prompt"].as_str().unwrap(), "--negative-prompt", "blurry"][..],
            &["--steps", "3", "--guidance", "3.5", "--true-cfg", "4", "--width", "24", "--height", "32"],
            &["--max-sequence-length", "16", "--init-latents", init.to_str().unwrap()],
            &["--save-latents", latents.to_str().unwrap()],
            &["--out", dir.join("img.png").to_str().unwrap(), "--device", &device_name()],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let device = device();
    let got = SafeTensorFiles::open_file(&latents).unwrap().float::<4>("latents", &device, DType::F32).unwrap();
    assert_close("generate", got, f.float::<4>("dev_cfg.final_latents", &device, DType::F32).unwrap(), 1e-5);
    assert_eq!(image::open(dir.join("img.png")).unwrap().width(), 24);

    let out = run_mapo(&["tokenize", "--model", m, "--prompt", "blurry", "--max-sequence-length", "16"]);
    let ids: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids["input_ids"], serde_json::json!(ints(&f, "text.input_ids")[77..]));
    assert_eq!(ids["input_ids_2"], serde_json::json!(ints(&f, "t5.input_ids")[16..]));
    assert!(ids.get("input_ids_3").is_none());

    let inp = dir.join("ids.safetensors");
    write(&inp, vec![("input_ids", f.get("text.input_ids").unwrap().to_data_any().unwrap())]);
    let o = dir.join("clip.safetensors");
    let dev = device_name();
    let args = ["forward", "text-encoder", "--model", m, "--device", &dev, "--inputs", inp.to_str().unwrap()];
    let r = run_mapo(&[&args[..], &["--out", o.to_str().unwrap()]].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let got = SafeTensorFiles::open_file(&o).unwrap();
    let pooled = got.float::<2>("pooler_output", &device, DType::F32).unwrap();
    assert_close("cli pooler_output", pooled, f.float::<2>("text.pooler_output", &device, DType::F32).unwrap(), 1e-5);
    assert!(got.get("text_embeds").is_none(), "CLIPTextModel has no projection");

    write(&inp, vec![("input_ids", f.get("t5.input_ids").unwrap().to_data_any().unwrap())]);
    let args = ["forward", "text-encoder-2", "--model", m, "--device", &dev, "--inputs", inp.to_str().unwrap()];
    let r = run_mapo(&[&args[..], &["--out", o.to_str().unwrap()]].concat());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let got = SafeTensorFiles::open_file(&o).unwrap().float::<3>("last_hidden_state", &device, DType::F32).unwrap();
    assert_close("cli T5", got, f.float::<3>("t5.last_hidden_state", &device, DType::F32).unwrap(), 1e-5);

    // [schnell] takes --guidance with a note; FLUX-only options are refused elsewhere.
    let schnell = fixtures().join("tiny-flux-schnell");
    let out = run_mapo(
        &[
            &["generate", "--model", schnell.to_str().unwrap(), "--prompt", "x", "--guidance", "2"][..],
            &["--steps", "1", "--width", "16", "--height", "16", "--max-sequence-length", "8"],
            &["--out", dir.join("s.png").to_str().unwrap(), "--device", &device_name()],
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--guidance is ignored"));
    let sd35 = fixtures().join("tiny-sd35");
    let out = mapo_quiet(&[
        "generate",
        "--model",
        sd35.to_str().unwrap(),
        "--prompt",
        "x",
        "--true-cfg",
        "2",
        "--out",
        "/dev/null",
    ]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--true-cfg applies to FLUX"));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn write_flux_case0(path: &std::path::Path) {
    let cases = open("flux_transformer_cases.safetensors");
    let names =
        ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "guidance"];
    let tensors =
        names.iter().map(|n| (*n, cases.get(&format!("dev.case0.{n}")).unwrap().to_data_any().unwrap())).collect();
    write(path, tensors);
}

/// `forward transformer` on FLUX inputs (§2b), alone and with a PEFT LoRA as diffusers saves
/// it (tools/golden/make_flux_transformer.py): attention, MLPs and the single blocks' fused
/// output projection; unpacked latents and a missing guidance are refused by name.
#[test]
fn flux_forward_transformer_and_peft_lora_match_diffusers() {
    let device = device();
    let cases = open("flux_transformer_cases.safetensors");
    let expected = open("lora/flux_expected.safetensors");
    let dir = std::env::temp_dir().join(format!("mapo-flux-fwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    write_flux_case0(&inp);
    let model = fixtures().join("tiny-flux-dev");
    let sample = |lora: Option<&std::path::Path>| {
        let r = forward_transformer(&model, &inp, &out, lora);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        SafeTensorFiles::open_file(&out).unwrap().float::<3>("sample", &device, DType::F32).unwrap()
    };
    let want = cases.float::<3>("dev.case0.sample", &device, DType::F32).unwrap();
    assert_close("forward transformer", sample(None), want, 1e-5);
    let lora = fixtures().join("lora/flux_peft.safetensors");
    let want = expected.float::<3>("peft", &device, DType::F32).unwrap();
    assert_close("flux + peft lora", sample(Some(&lora)), want, 1e-5);

    let bad = dir.join("bad.safetensors");
    std::fs::copy(&inp, &bad).unwrap();
    rewrite_tensor(&bad, "hidden_states", |_| TensorData::new(vec![0f32; 2 * 16 * 8 * 6], [2, 16, 8, 6]));
    let r = forward_transformer(&model, &bad, &out, None);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("unpacked latents"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The kohya / BFL layout ComfyUI users share (fused q/k/v and linear1, alphas ≠ rank, one
/// module without alpha, final-layer and modulation modules): `forward transformer --lora`
/// equals diffusers' `load_lora_weights` of the same file; the adapters equal diffusers'
/// conversion of it (tools/golden/make_flux_transformer.py); and `mapo lora convert` both
/// ways keeps every layer's update: kohya → PEFT → kohya, and diffusers' own PEFT file →
/// kohya (parts with separate downs fused block-diagonally) still gives diffusers' output.
#[test]
fn flux_kohya_lora_matches_diffusers_and_converts_both_ways() {
    use mapo::models::lora::{BlockLayout, LoraFile};
    let device = device();
    let expected = open("lora/flux_expected.safetensors");
    let dir = std::env::temp_dir().join(format!("mapo-flux-kohya-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    write_flux_case0(&inp);
    let model = fixtures().join("tiny-flux-dev");
    let sample = |lora: &std::path::Path| {
        let r = forward_transformer(&model, &inp, &out, Some(lora));
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        SafeTensorFiles::open_file(&out).unwrap().float::<3>("sample", &device, DType::F32).unwrap()
    };
    let kohya = fixtures().join("lora/flux_kohya.safetensors");
    let want = expected.float::<3>("kohya", &device, DType::F32).unwrap();
    assert_close("flux + kohya lora", sample(&kohya), want.clone(), 1e-5);

    let read = |p: &std::path::Path| LoraFile::read(p, &BlockLayout::uniform(0, 0), &device).unwrap();
    let deltas_match = |what: &str, a: &LoraFile, b: &LoraFile| {
        assert_eq!(a.adapters.keys().collect::<Vec<_>>(), b.adapters.keys().collect::<Vec<_>>(), "{what}: layers");
        for (layer, x) in &a.adapters {
            let err = rel_err(&to_vec(x.delta()), &to_vec(b.adapters[layer].delta()));
            assert!(err < 1e-6, "{what} {layer}: updates differ by {err:e}");
        }
    };
    let ours = read(&kohya);
    deltas_match(
        "kohya vs diffusers' conversion",
        &ours,
        &read(&fixtures().join("lora/flux_kohya_as_peft.safetensors")),
    );

    let convert = |input: &std::path::Path, to: &str, output: &std::path::Path| {
        let r = run_mapo(&[
            "lora",
            "convert",
            "--in",
            input.to_str().unwrap(),
            "--to",
            to,
            "--out",
            output.to_str().unwrap(),
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    };
    let (peft, back) = (dir.join("peft.safetensors"), dir.join("back.safetensors"));
    convert(&kohya, "peft", &peft);
    convert(&peft, "kohya", &back);
    deltas_match("kohya → peft → kohya", &ours, &read(&back));
    // The shared downs come back shared: the same modules and ranks as the original file.
    let (orig, again) = (SafeTensorFiles::open_file(&kohya).unwrap(), SafeTensorFiles::open_file(&back).unwrap());
    for name in orig.names().filter(|n| n.ends_with(".lora_down.weight")) {
        assert_eq!(orig.shape(name), again.shape(name), "{name}");
    }

    let diffusers_peft = fixtures().join("lora/flux_peft.safetensors");
    let fused = dir.join("fused.safetensors");
    convert(&diffusers_peft, "kohya", &fused);
    let want = expected.float::<3>("peft", &device, DType::F32).unwrap();
    assert_close("diffusers' peft file as kohya", sample(&fused), want, 1e-5);
    std::fs::remove_dir_all(&dir).unwrap();
}
