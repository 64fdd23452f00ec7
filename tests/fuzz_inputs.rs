//! Seeded, bounded fuzzing of the files users hand to mapo: mutated safetensors inputs
//! (`mapo forward`), mutated parquet files (`mapo cache`), mutated train configs
//! (`mapo train`), images of every shape and state (the cache's transform, `mapo score`),
//! LoRA files (`mapo lora convert`) and experiment files (names, sweeps). Every run must end in success or a clean error (exit code 0 or 1):
//! never a Rust panic (exit 101) or a signal (a segfault, an abort).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use common::mapo_quiet as mapo;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mapo-fuzz-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Counts (tried, clean errors) and fails on the first panic or signal, naming the input.
#[derive(Default)]
struct Tally {
    tried: usize,
    errors: usize,
}

impl Tally {
    fn check(&mut self, what: &str, out: &Output, keep: &Path) {
        self.tried += 1;
        match out.status.code() {
            Some(0) => {}
            Some(1) => self.errors += 1,
            other => panic!(
                "{what}: exit {other:?} (a panic or a signal), input kept at {}:\n{}",
                keep.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

/// One mutation of a file's bytes: flips, a truncation, a duplicated run, or zeroed bytes,
/// weighted towards the first bytes (safetensors' header, parquet's footer is at the end).
fn mutate(rng: &mut ChaCha8Rng, bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let n = b.len().max(1);
    let pos = |rng: &mut ChaCha8Rng| {
        if rng.random_bool(0.5) { rng.random_range(0..n.min(256)) } else { rng.random_range(0..n) }
    };
    match rng.random_range(0..5) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let i = pos(rng).min(b.len().saturating_sub(1));
                if !b.is_empty() {
                    b[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        1 => b.truncate(rng.random_range(0..n)),
        2 => {
            let i = pos(rng).min(b.len());
            let run: Vec<u8> = b[i..(i + 64).min(b.len())].to_vec();
            b.splice(i..i, run);
        }
        3 => {
            let i = rng.random_range(0..n);
            for x in b.iter_mut().skip(i).take(rng.random_range(1..32)) {
                *x = 0;
            }
        }
        _ => {
            // The end of the file: parquet's footer and metadata.
            for _ in 0..rng.random_range(1..6) {
                let i = n - 1 - rng.random_range(0..n.min(128));
                if i < b.len() {
                    b[i] = rng.random();
                }
            }
        }
    }
    b
}

/// A safetensors header rewritten with a changed shape, dtype or offset (structured
/// mutations reach the shape checks that byte flips rarely do).
fn mutate_header(rng: &mut ChaCha8Rng, bytes: &[u8]) -> Vec<u8> {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let names: Vec<String> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect();
    let name = &names[rng.random_range(0..names.len())];
    let entry = header.get_mut(name).unwrap();
    match rng.random_range(0..4) {
        0 => {
            let shape = entry["shape"].as_array_mut().unwrap();
            if !shape.is_empty() {
                let i = rng.random_range(0..shape.len());
                shape[i] = serde_json::json!([0u64, 1, 2, 3, 7, 77, 1 << 20][rng.random_range(0..7)]);
            }
        }
        1 => {
            let shape = entry["shape"].as_array_mut().unwrap();
            if rng.random_bool(0.5) {
                shape.push(serde_json::json!(1))
            } else {
                shape.pop();
            }
        }
        2 => entry["dtype"] = serde_json::json!(["F16", "BF16", "I64", "U8", "BOOL", "F64"][rng.random_range(0..6)]),
        _ => {
            let off = entry["data_offsets"].as_array_mut().unwrap();
            off[1] = serde_json::json!(off[1].as_u64().unwrap() + rng.random_range(1..4096));
        }
    }
    with_header(&header, &bytes[8 + len..])
}

/// A safetensors file of `header` (JSON, padded to 8 bytes) and the data bytes `data`.
fn with_header(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut json = serde_json::to_vec(header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    out
}

/// A valid input file of each `mapo forward` component, from the committed fixtures.
fn valid_inputs(d: &Path) -> Vec<(&'static str, Vec<u8>)> {
    use burn::tensor::TensorData;
    let write = |name: &str, tensors: Vec<(String, TensorData)>| {
        let p = d.join(format!("valid-{name}.safetensors"));
        mapo::models::io::write_tensors(&p, tensors).unwrap();
        std::fs::read(p).unwrap()
    };
    let unet = common::open("unet_cases.safetensors");
    let unet_inputs = ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
        .iter()
        .map(|n| (n.to_string(), unet.get(&format!("case0.{n}")).unwrap().to_data_any().unwrap()))
        .collect();
    let vae = common::open("vae_cases.safetensors");
    let latents = vec![("latents".to_string(), vae.get("case0.latents").unwrap().to_data_any().unwrap())];
    let images = vec![("sample".to_string(), vae.get("case0.sample").unwrap().to_data_any().unwrap())];
    let ids: Vec<i64> = (0..77).map(|i| (i * 13) % 1000).collect();
    let ids = vec![("input_ids".to_string(), TensorData::new(ids, [1, 77]))];
    vec![
        ("unet", write("unet", unet_inputs)),
        ("vae-decode", write("vae-decode", latents)),
        ("vae-encode", write("vae-encode", images)),
        ("text-encoder", write("text-encoder", ids.clone())),
        ("text-encoder-2", write("text-encoder-2", ids)),
    ]
}

#[test]
fn mutated_safetensors_inputs_never_panic() {
    let d = dir("safetensors");
    let valid = valid_inputs(&d);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut tally = Tally::default();
    for i in 0..150 {
        let (component, bytes) = &valid[i % valid.len()];
        let bytes = if i % 2 == 0 { mutate_header(&mut rng, bytes) } else { mutate(&mut rng, bytes) };
        let input = d.join(format!("in-{i}.safetensors"));
        std::fs::write(&input, bytes).unwrap();
        let out = common::forward_tiny(component, &input, &d.join("out.safetensors"));
        tally.check(&format!("forward {component} on mutation {i}"), &out, &input);
    }
    eprintln!("safetensors: {} inputs, {} clean errors, 0 panics", tally.tried, tally.errors);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn mutated_parquet_files_never_panic() {
    let d = dir("parquet");
    let valid = std::fs::read(common::fixtures().join("parquet/pairs.parquet")).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut tally = Tally::default();
    for i in 0..60 {
        let input = d.join(format!("in-{i}.parquet"));
        std::fs::write(&input, mutate(&mut rng, &valid)).unwrap();
        let out = common::cache_tiny(&input, &d.join(format!("cache-{i}")), &["--max-samples", "2"]);
        tally.check(&format!("cache on mutation {i}"), &out, &input);
    }
    eprintln!("parquet: {} files, {} clean errors, 0 panics", tally.tried, tally.errors);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Train configs with one key set to a hostile value: each must be refused with an error
/// naming the key, or train (one step) normally.
#[test]
fn mutated_train_configs_never_panic() {
    let d = dir("toml");
    let model = common::fixtures().join("tiny-sdxl");
    let pairs = d.join("pairs.safetensors");
    let made =
        mapo(&["make-pairs", "--model", model.to_str().unwrap(), "--pairs", "2", "--out", pairs.to_str().unwrap()]);
    assert!(made.status.success());
    let keys = [
        "steps",
        "batch_size",
        "grad_accumulation",
        "seed",
        "optimizer.lr",
        "optimizer.beta1",
        "optimizer.eps",
        "optimizer.weight_decay",
        "warmup_steps",
        "max_grad_norm",
        "checkpoint_every",
        "keep_checkpoints",
        "max_bad_steps",
        "lora.rank",
        "method_params.beta",
        "validation_every",
        "validation_prompts",
        "dtype",
        "method",
        "lr_schedule",
        "data_transform.resolution",
    ];
    let values = ["0", "-1", "1e39", "-1e39", "nan", "inf", "18446744073709551615", "\"x\"", "[]", "{}", "0.5", "2"];
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    let mut tally = Tally::default();
    for i in 0..60 {
        let key = keys[rng.random_range(0..keys.len())];
        let value = values[rng.random_range(0..values.len())];
        let config = d.join(format!("run-{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "model = {model:?}\ndata = {pairs:?}\noutput_dir = {:?}\nmethod = \"mapo\"\nsteps = 1\ndevice = \"flex\"\n",
                d.join(format!("out-{i}"))
            ),
        )
        .unwrap();
        let set = format!("{key}={value}");
        let out = mapo(&["train", "--config", config.to_str().unwrap(), "--set", &set]);
        tally.check(&format!("train --set {set}"), &out, &config);
    }
    eprintln!("toml: {} configs, {} clean errors, 0 panics", tally.tried, tally.errors);
    std::fs::remove_dir_all(&d).unwrap();
}

/// An image file of a random kind: extreme aspect ratios, 16-bit and grey and alpha PNGs,
/// JPEGs, then possibly truncated or mutated.
fn random_image(rng: &mut ChaCha8Rng) -> (Vec<u8>, &'static str) {
    use image::{DynamicImage, ImageFormat};
    let (w, h) = match rng.random_range(0..4) {
        0 => (1, rng.random_range(1..200_000)),
        1 => (rng.random_range(1..200_000), rng.random_range(1..3)),
        2 => (rng.random_range(1..64), rng.random_range(1..64)),
        _ => (rng.random_range(200..600), rng.random_range(200..600)),
    };
    let rgb = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x ^ y) as u8, (x * 3) as u8, (y * 5) as u8]));
    let img = match rng.random_range(0..4) {
        0 => DynamicImage::ImageRgb8(rgb),
        1 => DynamicImage::ImageRgb16(DynamicImage::ImageRgb8(rgb).to_rgb16()),
        2 => DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(rgb).to_luma8()),
        _ => DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(rgb).to_rgba8()),
    };
    // JPEG holds 8-bit grey or RGB up to 65535 a side.
    let jpeg = rng.random_bool(0.3)
        && w.max(h) <= 65_535
        && !matches!(img, DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba8(_));
    let (format, ext) = if jpeg { (ImageFormat::Jpeg, "jpg") } else { (ImageFormat::Png, "png") };
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format).unwrap();
    match rng.random_range(0..4) {
        0 => bytes.truncate(rng.random_range(0..bytes.len())),
        1 => bytes = mutate(rng, &bytes),
        _ => {}
    }
    (bytes, ext)
}

/// Images of every shape and state through both paths that decode and resize them: the
/// cache's transform (in process) and `mapo score` (one run over all of them).
#[test]
fn mutated_images_never_panic() {
    let d = dir("images");
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let config = mapo::data::transform::TransformConfig { resolution: 64, ..Default::default() };
    let mut lines = String::new();
    let mut errors = 0;
    for i in 0..40 {
        let (bytes, ext) = random_image(&mut rng);
        let name = format!("img-{i}.{ext}");
        std::fs::write(d.join(&name), &bytes).unwrap();
        let pair = mapo::data::parquet::Pair {
            file: d.join(&name),
            row: i,
            caption: "x".into(),
            chosen: bytes.clone(),
            rejected: bytes,
            label: None,
        };
        errors += usize::from(mapo::data::transform::prepare(&pair, &config, 0, i as u64).is_err());
        lines.push_str(&format!("{{\"image\": {name:?}, \"prompt\": \"an image\"}}\n"));
    }
    std::fs::write(d.join("rows.jsonl"), lines).unwrap();
    let clip = common::fixtures().join("tiny-clip");
    let out = mapo(&[
        "score",
        "--scorer",
        "clip",
        "--model",
        clip.to_str().unwrap(),
        "--device",
        "flex",
        "--pairs",
        d.join("rows.jsonl").to_str().unwrap(),
        "--out",
        d.join("scores.jsonl").to_str().unwrap(),
    ]);
    let mut tally = Tally::default();
    tally.check("score on 40 random images", &out, &d);
    eprintln!("images: 40 through the transform ({errors} refused), one scoring run, 0 panics");
    std::fs::remove_dir_all(&d).unwrap();
}

/// LoRA files with hostile scales, metadata of every JSON type, missing halves and byte
/// mutations, through `mapo lora convert` (which reads them as every command does).
#[test]
fn mutated_lora_files_never_panic() {
    let d = dir("lora");
    let peft = std::fs::read(common::fixtures().join("lora/peft.safetensors")).unwrap();
    let kohya = std::fs::read(common::fixtures().join("lora/kohya.safetensors")).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    let values = ["\"8\"", "[1]", "{}", "null", "true", "-1", "0", "1e400", "NaN", "\"true\"", "8"];
    let mut tally = Tally::default();
    for i in 0..40 {
        let source = if i % 2 == 0 { &peft } else { &kohya };
        let bytes = match rng.random_range(0..4) {
            0 => mutate(&mut rng, source),
            1 => mutate_header(&mut rng, source),
            _ => {
                // Rewrite the JSON header: a metadata key set to a hostile value, or a
                // tensor (an alpha, a half of an adapter) dropped.
                let len = u64::from_le_bytes(source[..8].try_into().unwrap()) as usize;
                let mut header: serde_json::Value = serde_json::from_slice(&source[8..8 + len]).unwrap();
                let map = header.as_object_mut().unwrap();
                if rng.random_bool(0.5) {
                    let names: Vec<String> = map.keys().filter(|k| *k != "__metadata__").cloned().collect();
                    map.remove(&names[rng.random_range(0..names.len())]);
                } else if let Some(meta) = map.get_mut("__metadata__").and_then(|m| m.as_object_mut()) {
                    let key = ["lora_alpha", "use_rslora", "alpha_pattern", "use_dora", "r"][rng.random_range(0..5)];
                    let value = values[rng.random_range(0..values.len())];
                    let text = match meta.get("lora_adapter_metadata").and_then(|v| v.as_str()) {
                        Some(json) => {
                            let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
                            v[format!("unet.{key}")] = serde_json::from_str(value).unwrap_or(serde_json::json!(value));
                            v.to_string()
                        }
                        None => value.to_string(),
                    };
                    meta.insert("lora_adapter_metadata".into(), text.into());
                }
                with_header(&header, &source[8 + len..])
            }
        };
        let input = d.join(format!("in-{i}.safetensors"));
        std::fs::write(&input, bytes).unwrap();
        let out = d.join("out.safetensors");
        let run =
            mapo(&["lora", "convert", "--in", input.to_str().unwrap(), "--to", "peft", "--out", out.to_str().unwrap()]);
        tally.check(&format!("lora convert on mutation {i}"), &run, &input);
    }
    eprintln!("lora: {} files, {} clean errors, 0 panics", tally.tried, tally.errors);
    std::fs::remove_dir_all(&d).unwrap();
}

/// Experiment files with hostile names and sweeps, planned in process: an error or a plan,
/// never a panic, and never a run folder outside runs_dir.
#[test]
fn mutated_experiment_files_never_panic() {
    let d = dir("experiments");
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let names = ["../x", "/abs", "..", ".", "", "a/b", "ok", "é", "a\\b", "-", "x".repeat(300).leak()];
    let sweeps = [
        "\"pretrain.lr\" = [\"1e-3\", \"1e_3\"]",
        "\"train.seed\" = [1, 1]",
        "\"train.seed\" = []",
        "\"train.seed\" = [\"x\", 2]",
        "\"name\" = [\"a\"]",
        "\"nothing.here\" = [1]",
        "\"train.steps\" = [0, -1, 1e39]",
        "\"method_params.mapo.beta\" = [0.1, 0.1]",
    ];
    let runs_dir = d.join("runs");
    let (mut tried, mut planned) = (0, 0);
    for i in 0..60 {
        let name = names[rng.random_range(0..names.len())];
        let sweep = sweeps[rng.random_range(0..sweeps.len())];
        let file = d.join(format!("exp-{i}.toml"));
        std::fs::write(
            &file,
            format!(
                "name = {name:?}\nruns_dir = {runs_dir:?}\nmethods = [\"mapo\", \"sft\"]\n[model]\nbuiltin = \"toy\"\n\
                 [data]\ngenerated = \"style\"\n[train]\nsteps = 2\n[sweep]\n{sweep}\n"
            ),
        )
        .unwrap();
        tried += 1;
        if let Ok((exp, runs)) = mapo::experiment::config::load(&file, &[]) {
            planned += 1;
            let mut seen = std::collections::HashSet::new();
            for r in &runs {
                let folder = runs_dir.join(&exp.name).join(&r.name);
                assert!(folder.starts_with(&runs_dir) && !exp.name.contains(".."), "{}", folder.display());
                assert!(seen.insert(r.name.clone()), "{name:?} {sweep}: run {} planned twice", r.name);
            }
        }
    }
    eprintln!("experiments: {tried} files, {planned} planned, 0 panics");
    std::fs::remove_dir_all(&d).unwrap();
}
