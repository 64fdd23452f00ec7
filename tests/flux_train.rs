//! `mapo train` on a FLUX.1 [dev] folder (tests/fixtures/tiny-flux-dev): the flow objective
//! and the embedded training guidance come from the family; LoRA runs (attention of both
//! block kinds) write a PEFT file (`transformer.*` keys) and the merged `transformer/`
//! folder; DPO's reference is the policy with its adapters off, or its cached errors; a
//! killed run resumes to the same losses; `mapo cache` stores T5's states (bf16) and CLIP's
//! pooled output as the pipeline encodes them.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mapo::models::io::SafeTensorFiles;

fn model() -> PathBuf {
    fixtures().join("tiny-flux-dev")
}

fn setup(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("mapo-flux-train-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pairs = dir.join("pairs.safetensors");
    let m = model();
    let args = ["make-pairs", "--model", m.to_str().unwrap(), "--pairs", "8", "--size", "8x6"];
    run_mapo(&[&args[..], &["--out", pairs.to_str().unwrap()]].concat());
    (dir, pairs)
}

fn train(dir: &Path, data: &Path, name: &str, body: &str) -> PathBuf {
    let out = dir.join(name);
    let config = dir.join(format!("{name}.toml"));
    let device = device_name();
    let model = model();
    std::fs::write(
        &config,
        format!(
            "model = {model:?}\ndata = {data:?}\noutput_dir = {out:?}\nsteps = 4\nbatch_size = 2\ndevice = \"{device}\"\n\
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

#[test]
fn flux_lora_runs_write_peft_adapters_and_the_merged_transformer() {
    let (dir, pairs) = setup("lora");
    let body = "method = \"mapo\"\nguidance = 2.5\nvalidation_every = 4\nvalidation_prompts = 1\nvalidation_steps = 2\n\
                [lora]\nrank = 2\nalpha = 4\n[optimizer]\nlr = 1e-3\n";
    let run = train(&dir, &pairs, "mapo", body);
    let l = losses(&run);
    assert_eq!(l.len(), 4);
    assert!(l.iter().all(|v| v.is_finite()), "{l:?}");
    assert!(run.join("validation/step-00000004/sample-0.png").is_file());

    let peft = SafeTensorFiles::open_file(&run.join("pytorch_lora_weights.safetensors")).unwrap();
    let names: Vec<&str> = peft.names().collect();
    assert!(names.iter().all(|n| n.starts_with("transformer.")), "{names:?}");
    for layer in [
        "transformer_blocks.0.attn.add_q_proj",
        "transformer_blocks.1.attn.to_add_out",
        "single_transformer_blocks.1.attn.to_v",
    ] {
        assert!(names.contains(&format!("transformer.{layer}.lora_A.weight").as_str()), "no adapter on {layer}");
    }

    // The merged folder equals the base with the PEFT file folded in.
    let cases = open("flux_transformer_cases.safetensors");
    let inp = dir.join("in.safetensors");
    let keys =
        ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "guidance"];
    let tensors = keys
        .iter()
        .map(|n| (n.to_string(), cases.get(&format!("dev.case0.{n}")).unwrap().to_data_any().unwrap()))
        .collect();
    mapo::models::io::write_tensors(&inp, tensors).unwrap();
    let forward = |model: &Path, lora: Option<&Path>, out: &Path| {
        let r = forward_transformer(model, &inp, out, lora);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        values(&SafeTensorFiles::open_file(out).unwrap(), "sample")
    };
    let file = run.join("pytorch_lora_weights.safetensors");
    let with_file = forward(&model(), Some(&file), &dir.join("a.safetensors"));
    let merged = forward(&run.join("transformer"), None, &dir.join("b.safetensors"));
    let base = forward(&model(), None, &dir.join("c.safetensors"));
    // The kohya file (BFL names, fused q/k/v) applies the same update.
    let kohya = run.join("pytorch_lora_weights_kohya.safetensors");
    let with_kohya = forward(&model(), Some(&kohya), &dir.join("d.safetensors"));
    assert!(rel_err(&with_kohya, &with_file) < 1e-5, "kohya vs peft: {}", rel_err(&with_kohya, &with_file));
    let (err, moved) = (rel_err(&merged, &with_file), rel_err(&with_file, &base));
    eprintln!("merged vs base + file: {err:.2e}; the adapters moved the output by {moved:.2e}");
    assert!(err < 1e-5 && moved > 1e-4, "merged vs file {err}, moved {moved}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn flux_reference_runs_train_and_resume() {
    let (dir, pairs) = setup("dpo");
    let body = "method = \"dpo\"\nmethod_params = { beta = 100.0 }\n[lora]\nrank = 2\n[optimizer]\nlr = 1e-3\n";
    let dpo = losses(&train(&dir, &pairs, "dpo", body));
    let cached = losses(&train(&dir, &pairs, "dpo-cached", &format!("reference_cache = true\n{body}")));
    assert!((dpo[0] - std::f64::consts::LN_2).abs() < 1e-6, "first DPO loss {} is not ln 2", dpo[0]);
    for (a, b) in dpo.iter().zip(&cached) {
        assert!((a - b).abs() <= 1e-5 * a.abs().max(1e-3), "{dpo:?} vs {cached:?}");
    }
    // Resume from the step-2 checkpoint: the same last losses.
    let run = dir.join("dpo");
    std::fs::remove_dir_all(run.join("checkpoint-4")).unwrap();
    let before = losses(&run);
    run_mapo(&["train", "--config", dir.join("dpo.toml").to_str().unwrap(), "--resume", "latest"]);
    let after = losses(&run);
    assert_eq!(after.len(), 4);
    for (a, b) in before.iter().zip(&after) {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "{before:?} vs {after:?}");
    }
    // `guidance` is FLUX's: an SD3 run refuses it by name.
    let config = dir.join("sd3.toml");
    let sd3 = fixtures().join("tiny-sd35");
    let text = format!(
        "model = {sd3:?}\ndata = {pairs:?}\noutput_dir = {:?}\nsteps = 1\nmethod = \"sft\"\nguidance = 3.5\n",
        dir.join("x")
    );
    std::fs::write(&config, text).unwrap();
    let out = mapo_quiet(&["train", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("applies to FLUX.1 models"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mapo cache` with FLUX's encoders: T5's states (bf16, `--max-sequence-length` tokens) and
/// CLIP L's pooled output equal to the pipeline's encoding of each caption; training reads it.
#[test]
fn flux_cache_holds_the_pipelines_encodings_and_trains() {
    use burn::tensor::DType;
    let dir = std::env::temp_dir().join(format!("mapo-flux-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("cache");
    let parquet = fixtures().join("parquet/pairs.parquet");
    let m = model();
    let args = ["cache", "--model", m.to_str().unwrap(), "--data", parquet.to_str().unwrap(), "--resolution", "32"];
    let extra = ["--out", cache.to_str().unwrap(), "--max-samples", "4", "--max-sequence-length", "16"];
    run_mapo(&[&args[..], &extra, &["--device", &device_name()]].concat());
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cache.join("index.json")).unwrap()).unwrap();
    let shard = SafeTensorFiles::open_file(&cache.join(index["shards"][0]["file"].as_str().unwrap())).unwrap();
    let context = shard.get("encoder_hidden_states").unwrap();
    assert_eq!((context.dtype, context.shape[1..].to_vec()), (safetensors::Dtype::BF16, vec![16, 24]));
    assert_eq!(shard.shape("chosen_mean").unwrap()[1], 16);

    let mut pipe = mapo::sample::flux::FluxPipeline::load(&model(), None, &device(), DType::F32).unwrap();
    pipe.prompts.max_sequence_length = 16;
    let row = shard.get("row").unwrap().to_data_any().unwrap().convert::<i64>().try_to_vec::<i64>().unwrap()[0];
    // tools/golden/make_parquet.py captions row r "pair r: a gradient with a square".
    let (want, want_pooled) = pipe.prompts.encode(&format!("pair {row}: a gradient with a square")).unwrap();
    let got = shard.float::<3>("encoder_hidden_states", &device(), DType::F32).unwrap().narrow(0, 0, 1);
    let err = rel_err(&to_vec(got), &to_vec(want));
    let pooled = shard.float::<2>("text_embeds", &device(), DType::F32).unwrap().narrow(0, 0, 1);
    let pooled_err = rel_err(&to_vec(pooled), &to_vec(want_pooled));
    eprintln!("cached states vs the pipeline's: {err:.2e} (bf16 storage); pooled {pooled_err:.2e}");
    assert!(err < 8e-3 && pooled_err < 1e-5, "{err} {pooled_err}");

    let run = train(&dir, &cache, "from-cache", "method = \"sft\"\n[lora]\nrank = 2\n[optimizer]\nlr = 1e-3\n");
    assert_eq!(losses(&run).len(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mapo experiment` on a FLUX folder: the methods train on the parquet data (cached once
/// with FLUX's encoders) and the report says the objective is flow matching.
#[test]
fn flux_experiments_train_and_report() {
    let dir = std::env::temp_dir().join(format!("mapo-flux-exp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let body = format!(
        "name = \"flux-tiny\"\nmethods = [\"sft\", \"mapo\"]\nseeds = [0]\nruns_dir = {:?}\n\
         [model]\npath = {:?}\n[data]\nparquet = {:?}\n[data.transform]\nresolution = 32\n\
         [train]\nsteps = 2\nbatch_size = 2\ndevice = \"{}\"\n[train.lora]\nrank = 2\n[train.optimizer]\nlr = 1e-3\n",
        dir.join("runs"),
        model(),
        fixtures().join("parquet/pairs.parquet"),
        device_name()
    );
    let file = dir.join("exp.toml");
    std::fs::write(&file, body).unwrap();
    run_mapo(&["experiment", file.to_str().unwrap()]);
    let report = std::fs::read_to_string(dir.join("runs/flux-tiny/report.md")).unwrap();
    assert!(report.contains("Objective: flow matching"), "{report}");
    for method in ["sft", "mapo"] {
        assert!(report.contains(&format!("| {method} |")), "{report}");
    }
    let kohya = dir.join("runs/flux-tiny/mapo-s0/pytorch_lora_weights_kohya.safetensors");
    assert!(kohya.is_file(), "the FLUX run writes the kohya file");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Full fine-tuning of the real FLUX.1 [dev] (its config alone, nothing allocated) is said not
/// to fit one GPU, with the estimate, before anything loads.
#[test]
fn full_fine_tuning_of_real_flux_is_said_not_to_fit() {
    let dir = std::env::temp_dir().join(format!("mapo-flux-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("model/transformer")).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(root.join("assets/flux/flux1_dev_transformer.json"), dir.join("model/transformer/config.json"))
        .unwrap();
    let config = dir.join("run.toml");
    let text = format!(
        "model = {:?}\ndata = {:?}\noutput_dir = {:?}\nsteps = 1\nmethod = \"mapo\"\n",
        dir.join("model"),
        dir.join("missing.safetensors"),
        dir.join("out")
    );
    std::fs::write(&config, text).unwrap();
    let out = mapo_quiet(&["train", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no data: the run fails");
    assert!(err.contains("11.9 B parameters") && err.contains("190 GB"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
