//! `mapo train` on an SD3.5 folder (tests/fixtures/tiny-sd35): the flow objective is chosen
//! by the family, LoRA runs write a PEFT file (`transformer.*` keys) and the merged
//! `transformer/` folder, full runs the fine-tuned folder; DPO's reference is the policy with
//! its adapters off, or its cached errors; a killed run resumes to the same weights.
//! (tools/golden/check_sd3_export.py checks such a run's files in diffusers.)

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mapo::models::io::SafeTensorFiles;

fn setup(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("mapo-sd3-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pairs = dir.join("pairs.safetensors");
    let model = fixtures().join("tiny-sd35");
    let args = ["make-pairs", "--model", model.to_str().unwrap(), "--pairs", "8", "--size", "8x6"];
    run_mapo(&[&args[..], &["--out", pairs.to_str().unwrap()]].concat());
    (dir, pairs)
}

fn train(dir: &Path, pairs: &Path, name: &str, body: &str) -> PathBuf {
    let model = fixtures().join("tiny-sd35");
    let out = dir.join(name);
    let config = dir.join(format!("{name}.toml"));
    let device = device_name();
    std::fs::write(
        &config,
        format!(
            "model = {model:?}\ndata = {pairs:?}\noutput_dir = {out:?}\nsteps = 4\nbatch_size = 2\ndevice = \"{device}\"\n\
             checkpoint_every = 2\n{body}"
        ),
    )
    .unwrap();
    run_mapo(&["train", "--config", config.to_str().unwrap()]);
    out
}

fn losses(run: &Path) -> Vec<f64> {
    metric_lines(run).iter().map(|l| l["loss"].as_f64().unwrap()).collect()
}

fn values(f: &SafeTensorFiles, name: &str) -> Vec<f32> {
    f.get(name).unwrap().to_data().unwrap().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn sd3_lora_runs_write_peft_adapters_and_the_merged_transformer() {
    let (dir, pairs) = setup("lora");
    let run = train(&dir, &pairs, "mapo", "method = \"mapo\"\n[lora]\nrank = 2\nalpha = 4\n[optimizer]\nlr = 1e-3\n");
    let l = losses(&run);
    assert_eq!(l.len(), 4);
    assert!(l.iter().all(|v| v.is_finite()), "{l:?}");
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("objective = \"flow\""), "{saved}");

    // PEFT keys under `transformer.`, on the joint attention's text projections and on the
    // MMDiT-X attn2 too; no kohya file (its names are the SDXL UNet's).
    let peft = SafeTensorFiles::open_file(&run.join("pytorch_lora_weights.safetensors")).unwrap();
    let names: Vec<&str> = peft.names().collect();
    assert!(names.iter().all(|n| n.starts_with("transformer.")), "{names:?}");
    for layer in [
        "transformer_blocks.0.attn.add_q_proj",
        "transformer_blocks.0.attn2.to_q",
        "transformer_blocks.1.attn.to_add_out",
    ] {
        assert!(names.contains(&format!("transformer.{layer}.lora_A.weight").as_str()), "no adapter on {layer}");
    }
    assert!(!run.join("pytorch_lora_weights_kohya.safetensors").exists());

    // The merged folder equals the base with the PEFT file folded in.
    let inp = dir.join("in.safetensors");
    write_sd35_case0(&inp);
    let forward = |model: &Path, lora: Option<&Path>, out: &Path| {
        let r = forward_transformer(model, &inp, out, lora);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        values(&SafeTensorFiles::open_file(out).unwrap(), "sample")
    };
    let with_file = forward(
        &fixtures().join("tiny-sd35"),
        Some(&run.join("pytorch_lora_weights.safetensors")),
        &dir.join("a.safetensors"),
    );
    let merged = forward(&run.join("transformer"), None, &dir.join("b.safetensors"));
    let base = forward(&fixtures().join("tiny-sd35"), None, &dir.join("c.safetensors"));
    let err = rel_err(&merged, &with_file);
    let moved = rel_err(&with_file, &base);
    eprintln!("merged vs base + file: {err:.2e}; the adapters moved the output by {moved:.2e}");
    assert!(err < 1e-5 && moved > 1e-4, "merged vs file {err}, moved {moved}");
    // The exported folder keeps diffusers' position table, so diffusers loads it.
    let merged_file = SafeTensorFiles::open_component(&run.join("transformer"), &["diffusion_pytorch_model"]).unwrap();
    assert_eq!(merged_file.shape("pos_embed.pos_embed"), Some(&[1usize, 144, 16][..]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sd3_full_and_reference_runs_train_and_resume() {
    let (dir, pairs) = setup("full");
    // Full fine-tuning (SFT) writes the whole transformer.
    let sft = train(&dir, &pairs, "sft", "method = \"sft\"\n[optimizer]\nlr = 1e-4\n");
    assert!(sft.join("transformer/diffusion_pytorch_model.safetensors").is_file());
    // DPO with LoRA: its reference is the policy with the adapters off; with the cached
    // reference errors the losses are the same.
    let body = "method = \"dpo\"\nmethod_params = { beta = 100.0 }\n[lora]\nrank = 2\n[optimizer]\nlr = 1e-3\n";
    let dpo = losses(&train(&dir, &pairs, "dpo", body));
    let cached = losses(&train(&dir, &pairs, "dpo-cached", &format!("reference_cache = true\n{body}")));
    assert!((dpo[0] - std::f64::consts::LN_2).abs() < 1e-6, "first DPO loss {} is not ln 2", dpo[0]);
    for (a, b) in dpo.iter().zip(&cached) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "{dpo:?} vs {cached:?}");
    }
    // Resume from the step-2 checkpoint: the same last losses.
    let run = dir.join("sft");
    std::fs::remove_dir_all(run.join("checkpoint-4")).unwrap();
    let config = dir.join("sft.toml");
    let before = losses(&run);
    run_mapo(&["train", "--config", config.to_str().unwrap(), "--resume", "latest"]);
    let after = losses(&run);
    assert_eq!(after.len(), 4);
    for (a, b) in before.iter().zip(&after) {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "{before:?} vs {after:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mapo cache` with the SD3 encoders: 16-channel latent distributions, the shift recorded
/// beside the scale, and the prompt states (CLIPs + T5, 77 + 256 tokens) in bf16 equal to
/// the pipeline's encoding of each caption. Training reads the cache; an SDXL model is
/// refused on it by name.
#[test]
fn sd3_cache_holds_the_pipelines_encodings_and_trains() {
    use burn::tensor::DType;
    let dir = std::env::temp_dir().join(format!("mapo-sd3-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("cache");
    let model = fixtures().join("tiny-sd35");
    let parquet = fixtures().join("parquet/pairs.parquet");
    let args = ["cache", "--model", model.to_str().unwrap(), "--data", parquet.to_str().unwrap(), "--resolution", "32"];
    run_mapo(
        &[&args[..], &["--out", cache.to_str().unwrap(), "--max-samples", "4", "--device", &device_name()]].concat(),
    );
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cache.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["meta"]["shift_factor"], serde_json::json!(0.0609));
    let shard = SafeTensorFiles::open_file(&cache.join(index["shards"][0]["file"].as_str().unwrap())).unwrap();
    let context = shard.get("encoder_hidden_states").unwrap();
    assert_eq!((context.dtype, context.shape[1..].to_vec()), (safetensors::Dtype::BF16, vec![77 + 256, 24]));
    assert_eq!(shard.shape("chosen_mean").unwrap()[1], 16);

    // Row 0's states are the pipeline's encoding of its caption, rounded to bf16.
    let pipe = mapo::sample::sd3::Sd3Pipeline::load(&model, None, true, &device(), DType::F32).unwrap();
    let row = shard.get("row").unwrap().to_data_any().unwrap().convert::<i64>().try_to_vec::<i64>().unwrap()[0];
    // tools/golden/make_parquet.py captions row r "pair r: a gradient with a square".
    let caption = format!("pair {row}: a gradient with a square");
    let (want, _) = pipe.prompts.encode(&caption).unwrap();
    let got = shard.float::<3>("encoder_hidden_states", &device(), DType::F32).unwrap().narrow(0, 0, 1);
    let err = rel_err(&to_vec(got), &to_vec(want));
    eprintln!("cached states vs the pipeline's: {err:.2e} (bf16 storage)");
    assert!(err < 8e-3, "{err}");

    // Trains from the cache; the SDXL model is refused on it.
    let run = train(&dir, &cache, "from-cache", "method = \"sft\"\n[lora]\nrank = 2\n[optimizer]\nlr = 1e-3\n");
    assert_eq!(losses(&run).len(), 4);
    let config = dir.join("sdxl.toml");
    let sdxl = fixtures().join("tiny-sdxl");
    std::fs::write(
        &config,
        format!("model = {sdxl:?}\ndata = {cache:?}\noutput_dir = {:?}\nsteps = 1\nmethod = \"sft\"\n", dir.join("x")),
    )
    .unwrap();
    let out = mapo_quiet(&["train", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("made for another model"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mapo experiment` on an SD3 folder: the three methods train on the parquet data (cached
/// once with the SD3 encoders) and the report says the objective is flow matching; `[eval]`
/// (a UNet sampler) is refused by name before anything trains.
#[test]
fn sd3_experiments_train_and_report() {
    let dir = std::env::temp_dir().join(format!("mapo-sd3-exp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let body = |eval: &str| {
        format!(
            "name = \"sd3-tiny\"\nmethods = [\"sft\", \"dpo\", \"mapo\"]\nseeds = [0]\nruns_dir = {:?}\n\
             [model]\npath = {:?}\n[data]\nparquet = {:?}\n[data.transform]\nresolution = 32\n\
             [train]\nsteps = 2\nbatch_size = 2\ndevice = \"{}\"\n[train.lora]\nrank = 2\n[train.optimizer]\nlr = 1e-3\n{eval}",
            dir.join("runs"),
            fixtures().join("tiny-sd35"),
            fixtures().join("parquet/pairs.parquet"),
            device_name()
        )
    };
    let file = dir.join("exp.toml");
    std::fs::write(&file, body("")).unwrap();
    run_mapo(&["experiment", file.to_str().unwrap()]);
    let report = std::fs::read_to_string(dir.join("runs/sd3-tiny/report.md")).unwrap();
    assert!(report.contains("Objective: flow matching"), "{report}");
    for method in ["sft", "dpo", "mapo"] {
        assert!(report.contains(&format!("| {method} |")), "{report}");
    }
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "a cat\n").unwrap();
    let eval = format!(
        "[eval]\nevery = 1\nprompts = {prompts:?}\n[eval.scorers]\nclip = {:?}\n",
        fixtures().join("tiny-clip")
    );
    std::fs::write(&file, body(&eval)).unwrap();
    let out = mapo_quiet(&["experiment", file.to_str().unwrap(), "--set", "name=\"sd3-eval\""]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("[eval] samples SDXL UNets only"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
