//! `mapo forward` as other tools call it (docs/design.md §2).

mod common;

use std::process::Command;

use burn::tensor::DType;
use common::*;
use mapo::models::io::{SafeTensorFiles, write_tensors};

fn run(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_mapo")).args(args).output().unwrap();
    assert!(out.status.success(), "mapo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn forward_unet_and_vae_from_files() {
    let dir = std::env::temp_dir().join(format!("mapo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = fixtures().join("tiny-sdxl");
    let device_name = device_name();
    let cases = open("unet_cases.safetensors");
    let inputs: Vec<_> = ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
        .iter()
        .map(|n| (n.to_string(), cases.get(&format!("case2.{n}")).unwrap().to_data_any().unwrap()))
        .collect();
    let (inp, outp) = (dir.join("unet_in.safetensors"), dir.join("unet_out.safetensors"));
    write_tensors(&inp, inputs).unwrap();
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    run(&[
        "forward",
        "unet",
        "--model",
        &s(&model),
        "--inputs",
        &s(&inp),
        "--out",
        &s(&outp),
        "--device",
        &device_name,
    ]);
    let device = device();
    let got = SafeTensorFiles::open_file(&outp).unwrap().float::<4>("sample", &device, DType::F32).unwrap();
    assert_close("cli unet", got, cases.float::<4>("case2.out", &device, DType::F32).unwrap(), 1e-4);

    let vcases = open("vae_cases.safetensors");
    let enc_in = dir.join("enc_in.safetensors");
    write_tensors(&enc_in, vec![("sample".into(), vcases.get("case0.sample").unwrap().to_data_any().unwrap())])
        .unwrap();
    run(&[
        "forward",
        "vae-encode",
        "--model",
        &s(&model),
        "--inputs",
        &s(&enc_in),
        "--out",
        &s(&outp),
        "--device",
        &device_name,
    ]);
    let out = SafeTensorFiles::open_file(&outp).unwrap();
    for k in ["mean", "logvar"] {
        let want = vcases.float::<4>(&format!("case0.{k}"), &device, DType::F32).unwrap();
        assert_close(&format!("cli {k}"), out.float::<4>(k, &device, DType::F32).unwrap(), want, 1e-4);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn forward_reports_missing_input_by_name() {
    let dir = std::env::temp_dir().join(format!("mapo-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inp = dir.join("in.safetensors");
    write_tensors(&inp, vec![("sample".into(), burn::tensor::TensorData::new(vec![0f32; 64], [1, 4, 4, 4]))]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args([
            "forward",
            "unet",
            "--model",
            fixtures().join("tiny-sdxl").to_str().unwrap(),
            "--inputs",
            inp.to_str().unwrap(),
        ])
        .args(["--out", dir.join("o.safetensors").to_str().unwrap(), "--device", "flex"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"timestep\" is missing"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Developer commands live under `mapo dev` (and keep working without it, as docs/design.md §2
/// and other tools call them); `train` and `experiment` take their file the same two ways.
#[test]
fn dev_commands_and_config_files_are_taken_alike() {
    let model = fixtures().join("tiny-sdxl");
    let tokenize = |prefix: &[&str]| {
        let mut args = prefix.to_vec();
        args.extend(["tokenize", "--model", model.to_str().unwrap(), "--prompt", "a cat"]);
        run(&args).stdout
    };
    assert_eq!(tokenize(&["dev"]), tokenize(&[]));
    let help = String::from_utf8(run(&["--help"]).stdout).unwrap();
    let listed = |name: &str| help.lines().any(|l| l.trim_start().starts_with(&format!("{name} ")));
    assert!(listed("dev") && listed("train") && !listed("forward") && !listed("make-pairs"), "{help}");

    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/toy-methods.toml");
    // The plan is printed on stderr.
    let plan = |args: &[&str]| String::from_utf8(run(args).stderr).unwrap();
    let f = file.to_str().unwrap();
    let positional = plan(&["experiment", f, "--dry-run"]);
    assert!(positional.contains("8 runs"), "{positional}");
    assert_eq!(positional, plan(&["experiment", "--config", f, "--dry-run"]));
    let none = Command::new(env!("CARGO_BIN_EXE_mapo")).arg("train").output().unwrap();
    assert!(!none.status.success() && String::from_utf8_lossy(&none.stderr).contains("<FILE>"));
}
