//! `mapo train`: resume exactness, atomic checkpoints, the NaN guard, config errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mapo::models::io::SafeTensorFiles;

fn mapo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mapo")).args(args).output().unwrap()
}

fn setup(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("mapo-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pairs = dir.join("pairs.safetensors");
    let model = fixtures().join("tiny-sdxl");
    let out =
        mapo(&["make-pairs", "--model", model.to_str().unwrap(), "--pairs", "6", "--out", pairs.to_str().unwrap()]);
    assert!(out.status.success());
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "model = {model:?}\ndata = {pairs:?}\noutput_dir = {:?}\nmethod = \"mapo\"\nsteps = 6\nbatch_size = 2\n\
             grad_accumulation = 2\nseed = 3\nwarmup_steps = 2\ncheckpoint_every = 3\nkeep_checkpoints = 5\ndevice = \"{}\"\n\
             [optimizer]\nlr = 1e-3\n",
            dir.join("run"),
            device_name()
        ),
    )
    .unwrap();
    (dir, config)
}

fn train<S: AsRef<str>>(config: &Path, extra: &[S]) -> std::process::Output {
    let mut args = vec!["train", "--config", config.to_str().unwrap()];
    args.extend(extra.iter().map(|s| s.as_ref()));
    mapo(&args)
}

/// Metric lines without the timing fields (which differ between any two runs).
fn metrics(run: &Path) -> Vec<serde_json::Value> {
    metric_lines(run)
}

fn weights(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let f = SafeTensorFiles::open_file(&dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    f.names().map(|n| (n.to_string(), f.get(n).unwrap().bytes.to_vec())).collect()
}

#[test]
fn stop_at_3_and_resume_to_6_equals_an_uninterrupted_run() {
    resume_case("resume", &[]);
}

/// LoRA runs checkpoint only the adapters; resuming rebuilds the base from the model folder.
#[test]
fn lora_stop_and_resume_equals_an_uninterrupted_run() {
    resume_case("resume-lora", &["--set", "lora={rank = 2, alpha = 4}"]);
}

fn resume_case(name: &str, extra: &[&str]) {
    let (dir, config) = setup(name);
    let with = |args: &[&str]| -> Vec<String> { args.iter().chain(extra).map(|a| a.to_string()).collect() };
    let full = train(&config, &with(&["--set", &format!("output_dir={:?}", dir.join("full"))]));
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stderr));

    let part = dir.join("part");
    let first = train(&config, &with(&["--set", &format!("output_dir={part:?}"), "--set", "steps=3"]));
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // Simulate a crash after step 3: a later, half-written checkpoint is left behind.
    std::fs::create_dir_all(part.join(".tmp-checkpoint-00000004/unet")).unwrap();
    std::fs::write(part.join(".tmp-checkpoint-00000004/unet/diffusion_pytorch_model.safetensors"), b"trunc").unwrap();
    let second = train(&config, &with(&["--set", &format!("output_dir={part:?}"), "--resume", "latest"]));
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));

    let (a, b) = (metrics(&dir.join("full")), metrics(&part));
    assert_eq!(a.len(), 6);
    assert_eq!(a, b, "metrics of the resumed run differ");
    assert_eq!(weights(&dir.join("full/unet")), weights(&part.join("unet")), "final weights differ");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_interrupted_checkpoint_write_leaves_the_previous_one_valid() {
    let (dir, config) = setup("atomic");
    let run = dir.join("run");
    assert!(train(&config, &["--set", "steps=3"]).status.success());
    let ckpts = mapo::train::checkpoint::list(&run).unwrap();
    assert_eq!(ckpts.len(), 1);
    // A write killed midway leaves only a temporary folder, which is never picked up.
    std::fs::create_dir_all(run.join(".tmp-checkpoint-00000006")).unwrap();
    assert_eq!(mapo::train::checkpoint::resolve(&run, "latest").unwrap(), ckpts[0]);
    let unet = ckpts[0].join("unet");
    mapo::models::unet::UNet2DConditionModel::from_dir(&unet, &device(), burn::tensor::DType::F32).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_config_keys_and_bad_overrides_are_errors() {
    let (dir, config) = setup("config");
    let out = train(&config, &["--set", "learning_rat=1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--set learning_rat: unknown key learning_rat (did you mean learning_rate?)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = train(&config, &["--set", "method=orpo"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown method \"orpo\""));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn non_finite_losses_skip_updates_then_stop() {
    let (dir, config) = setup("nan");
    // A NaN in the data makes every loss NaN.
    rewrite_tensor(&dir.join("pairs.safetensors"), "chosen", |d| {
        burn::tensor::TensorData::new(vec![f32::NAN; d.num_elements()], d.shape().to_vec())
    });
    let out = train(&config, &["--set", "max_bad_steps=2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 non-finite losses in a row"), "{err}");
    // The per-step warnings reach stderr although it is not a terminal here.
    assert!(err.contains("update skipped (1 in a row)"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// For every method: the run with block checkpointing trains the same model (DPO's reference
/// errors come from the plain device and join the policy's graph).
#[test]
fn gradient_checkpointing_changes_nothing_but_memory() {
    let (dir, config) = setup("ckpt");
    for method in ["mapo", "dpo", "sft"] {
        for gc in ["false", "true"] {
            let out = train(
                &config,
                &[
                    "--set",
                    &format!("output_dir={:?}", dir.join(format!("{method}-{gc}"))),
                    "--set",
                    "steps=2",
                    "--set",
                    &format!("method={method:?}"),
                    "--set",
                    &format!("gradient_checkpointing={gc}"),
                ],
            );
            assert!(out.status.success(), "{method} {gc}: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The block-checkpointed backward sums a few gradients in another order: the losses
        // are equal, gradient norms and later steps agree to rounding (measured 1.2e-11).
        let (plain, ckpt) =
            (metrics(&dir.join(format!("{method}-false"))), metrics(&dir.join(format!("{method}-true"))));
        assert_eq!(plain.len(), ckpt.len());
        for (a, b) in plain.iter().zip(&ckpt) {
            assert_eq!(a["loss"].as_f64().is_some(), b["loss"].as_f64().is_some());
            for (key, x) in a.as_object().unwrap() {
                let (x, y) = (x.as_f64(), b[key].as_f64());
                if let (Some(x), Some(y)) = (x, y) {
                    assert!((x - y).abs() <= 1e-6 * x.abs().max(1e-3), "{method} {key}: {x} vs {y}");
                }
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn validation_writes_latents_and_images() {
    let (dir, config) = setup("validation");
    let out = train(&config, &["--set", "steps=2", "--set", "validation_every=2", "--set", "validation_steps=3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v = dir.join("run/validation/step-00000002");
    let latents = SafeTensorFiles::open_file(&v.join("latents.safetensors")).unwrap();
    assert_eq!(latents.shape("latents").unwrap(), &[2, 4, 8, 8]);
    // The fixture folder has a VAE (two downsamplers): 8×8 latents decode to 32×32 images.
    let img = std::fs::read(v.join("sample-1.png")).unwrap();
    assert_eq!(&img[1..4], b"PNG");
    assert_eq!(u32::from_be_bytes(img[16..20].try_into().unwrap()), 32);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// lr 1e39 keeps the loss finite but makes every updated weight infinite. The CLI refuses
/// such a rate when it reads the config; a program that builds its config in code (no
/// validation) meets the library's guard: the run stops at the first such update, naming
/// it, before any checkpoint or final model is written.
#[test]
fn non_finite_weights_are_never_saved() {
    let (dir, config) = setup("inf-weights");
    let out = train(&config, &["--set", "optimizer.lr=1e39"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("optimizer.lr 1e39 must be in (0, 1]"));
    let mut unchecked: mapo::train::config::TrainConfig =
        toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    unchecked.optimizer.lr = 1e39;
    let err = mapo::train::run::train(&unchecked, &mapo::train::run::Start::default()).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("the update made parameters non-finite"), "{err}");
    let run = dir.join("run");
    assert!(!run.join("unet").exists(), "a final model was saved");
    let checkpoints = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("checkpoint"));
    assert_eq!(checkpoints.count(), 0, "a checkpoint was written");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mapo report` reads a `mapo train` folder (config.toml + metrics.jsonl) as one run.
#[test]
fn report_reads_a_train_folder() {
    let (dir, config) = setup("report");
    let run = dir.join("run");
    assert!(train(&config, &["--set", "steps=2"]).status.success());
    let out = mapo(&["report", run.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("| mapo |"), "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--set method=dpo` on a config written for MaPO takes DPO's defaults instead of failing
/// on MaPO's parameters (or using MaPO's β of 0.1 for DPO), and says so.
#[test]
fn switching_the_method_takes_its_defaults() {
    let (dir, config) = setup("switch");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace("[optimizer]", "[method_params]\nbeta = 0.1\nnum_train_timesteps = 1000\n[optimizer]");
    std::fs::write(&config, text).unwrap();
    let out = train(&config, &["--set", "method=dpo", "--set", "steps=1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("method_params") && err.contains("are not used"), "{err}");
    let saved = std::fs::read_to_string(dir.join("run/config.toml")).unwrap();
    assert!(saved.contains("method = \"dpo\"") && !saved.contains("num_train_timesteps"), "{saved}");
    std::fs::remove_dir_all(&dir).unwrap();
}
