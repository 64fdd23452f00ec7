//! Seeded, bounded fuzzing of the files users hand to mapo: mutated safetensors inputs
//! (`mapo forward`), mutated parquet files (`mapo cache`) and mutated train configs
//! (`mapo train`). Every run must end in success or a clean error (exit code 0 or 1):
//! never a Rust panic (exit 101) or a signal (a segfault, an abort).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn mapo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env("MAPO_QUIET_DEVICE", "1")
        .output()
        .unwrap()
}

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
    let mut json = serde_json::to_vec(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(&bytes[8 + len..]);
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
