//! FLUX.1 single files in Black Forest Labs' layout (`flux1-dev.safetensors`, what ComfyUI and
//! Civitai share): tests/fixtures/tiny-flux-dev-bfl.safetensors, written from the tiny [dev]
//! transformer and proven with diffusers' `from_single_file` (every tensor equal,
//! tools/golden/make_flux_single_file.py). Read in place with `--config` (text encoders, VAE,
//! tokenizers from the diffusers folder): diffusers' output; ComfyUI's `model.diffusion_model.`
//! spelling too; converted both ways bit for bit; a file without its folder, or with the
//! other variant's, refused by name.

mod common;

use std::path::{Path, PathBuf};

use burn::tensor::DType;
use common::*;
use mapo::models::io::{SafeTensorFiles, write_tensors};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapo-flux-single-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn bfl() -> PathBuf {
    fixtures().join("tiny-flux-dev-bfl.safetensors")
}

/// dev.case0's inputs for `forward transformer`.
fn case0(dir: &Path) -> PathBuf {
    let cases = open("flux_transformer_cases.safetensors");
    let names =
        ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "img_ids", "txt_ids", "guidance"];
    let inp = dir.join("case0.safetensors");
    let tensors = names
        .iter()
        .map(|n| (n.to_string(), cases.get(&format!("dev.case0.{n}")).unwrap().to_data_any().unwrap()))
        .collect();
    write_tensors(&inp, tensors).unwrap();
    inp
}

fn forward(model: &Path, config: &Path, inp: &Path, out: &Path) -> std::process::Output {
    let dev = device_name();
    mapo_quiet(&[
        "forward",
        "transformer",
        "--model",
        model.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--inputs",
        inp.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        &dev,
    ])
}

#[test]
fn a_bfl_file_is_read_in_place_with_its_folder() {
    let dir = tmp("read");
    let inp = case0(&dir);
    let out = dir.join("out.safetensors");
    let want =
        open("flux_transformer_cases.safetensors").float::<3>("dev.case0.sample", &device(), DType::F32).unwrap();
    let folder = fixtures().join("tiny-flux-dev");
    let r = forward(&bfl(), &folder, &inp, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stderr).contains("FLUX.1 [dev] transformer in BFL's layout"));
    let got = SafeTensorFiles::open_file(&out).unwrap().float::<3>("sample", &device(), DType::F32).unwrap();
    assert_close("BFL file", got, want.clone(), 1e-5);

    // ComfyUI's spelling: every key under model.diffusion_model.
    let src = SafeTensorFiles::open_file(&bfl()).unwrap();
    let prefixed = dir.join("comfy.safetensors");
    let tensors = src
        .names()
        .map(|n| (format!("model.diffusion_model.{n}"), src.get(n).unwrap().to_data_any().unwrap()))
        .collect();
    write_tensors(&prefixed, tensors).unwrap();
    let r = forward(&prefixed, &folder, &inp, &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let got = SafeTensorFiles::open_file(&out).unwrap().float::<3>("sample", &device(), DType::F32).unwrap();
    assert_close("BFL file, ComfyUI prefix", got, want, 1e-5);

    // Without a folder, or with [schnell]'s for a [dev] file: refused by name.
    let dev = device_name();
    let file = bfl();
    let args = ["forward", "transformer", "--model", file.to_str().unwrap(), "--device", &dev];
    let r = mapo_quiet(&[&args[..], &["--inputs", inp.to_str().unwrap(), "--out", out.to_str().unwrap()]].concat());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("give --config DIR"), "{err}");
    let r = forward(&bfl(), &fixtures().join("tiny-flux-schnell"), &inp, &out);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("guidance_embeds = false"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_flux_folder_converts_to_the_bfl_file_and_back_bit_for_bit() {
    let dir = tmp("convert");
    let folder = fixtures().join("tiny-flux-dev");
    let single = dir.join("flux.safetensors");
    run_mapo(&[
        "dev",
        "convert",
        "--model",
        folder.to_str().unwrap(),
        "--to",
        "single-file",
        "--out",
        single.to_str().unwrap(),
    ]);
    let (ours, want) = (SafeTensorFiles::open_file(&single).unwrap(), SafeTensorFiles::open_file(&bfl()).unwrap());
    let names = |f: &SafeTensorFiles| f.names().map(String::from).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&want), "the same BFL keys");
    for n in want.names() {
        assert_eq!(values(&ours, n), values(&want, n), "{n}");
    }

    let back = dir.join("back");
    let file = bfl();
    let args = ["dev", "convert", "--model", file.to_str().unwrap(), "--config", folder.to_str().unwrap()];
    run_mapo(&[&args[..], &["--to", "diffusers", "--out", back.to_str().unwrap()]].concat());
    let original = SafeTensorFiles::open_component(&folder.join("transformer"), &["diffusion_pytorch_model"]).unwrap();
    let converted = SafeTensorFiles::open_component(&back.join("transformer"), &["diffusion_pytorch_model"]).unwrap();
    assert_eq!(names(&original), names(&converted));
    for n in original.names() {
        assert_eq!(values(&original, n), values(&converted, n), "{n}");
    }
    assert!(back.join("text_encoder_2/config.json").is_file() && back.join("model_index.json").is_file());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Train from the BFL file (`model = FILE`, `model_config = DIR`) and export the result as a
/// BFL file (`export = ["diffusers", "single-file"]`): read back with its folder, it gives the
/// merged transformer's output.
#[test]
fn a_run_trains_from_and_exports_a_bfl_file() {
    let dir = tmp("train");
    let folder = fixtures().join("tiny-flux-dev");
    let pairs = dir.join("pairs.safetensors");
    let m = folder.to_str().unwrap();
    run_mapo(&["dev", "make-pairs", "--model", m, "--pairs", "4", "--size", "8x6", "--out", pairs.to_str().unwrap()]);
    let (run, config) = (dir.join("run"), dir.join("run.toml"));
    let text = format!(
        "model = {:?}\nmodel_config = {folder:?}\ndata = {pairs:?}\noutput_dir = {run:?}\nsteps = 2\nbatch_size = 2\n\
         method = \"mapo\"\ndevice = \"{}\"\nexport = [\"diffusers\", \"single-file\"]\nexport_dtype = \"f32\"\n\
         [lora]\nrank = 2\n[optimizer]\nlr = 1e-2\n",
        bfl(),
        device_name()
    );
    std::fs::write(&config, text).unwrap();
    run_mapo(&["train", "--config", config.to_str().unwrap()]);
    let single = run.join("model.safetensors");
    assert!(SafeTensorFiles::open_file(&single).unwrap().get("double_blocks.0.img_attn.qkv.weight").is_some());
    let inp = case0(&dir);
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    let r = forward(&single, &folder, &inp, &a);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = forward_transformer(&run.join("transformer"), &inp, &b, None);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let (got, want) = (
        values(&SafeTensorFiles::open_file(&a).unwrap(), "sample"),
        values(&SafeTensorFiles::open_file(&b).unwrap(), "sample"),
    );
    let base = values(&open("flux_transformer_cases.safetensors"), "dev.case0.sample");
    eprintln!(
        "exported file vs merged folder: {:.2e}; trained vs base {:.2e}",
        rel_err(&got, &want),
        rel_err(&want, &base)
    );
    assert!(rel_err(&got, &want) < 1e-6 && rel_err(&want, &base) > 1e-5);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An experiment on a BFL file: `[model] path` the file, `[model] config` its folder.
#[test]
fn an_experiment_runs_on_a_bfl_file() {
    let dir = tmp("exp");
    let body = format!(
        "name = \"flux-file\"\nmethods = [\"mapo\"]\nseeds = [0]\nruns_dir = {:?}\n\
         [model]\npath = {:?}\nconfig = {:?}\n[data]\nparquet = {:?}\n[data.transform]\nresolution = 32\n\
         [train]\nsteps = 2\nbatch_size = 2\ndevice = \"{}\"\n[train.lora]\nrank = 2\n",
        dir.join("runs"),
        bfl(),
        fixtures().join("tiny-flux-dev"),
        fixtures().join("parquet/pairs.parquet"),
        device_name()
    );
    let file = dir.join("exp.toml");
    std::fs::write(&file, body).unwrap();
    run_mapo(&["experiment", file.to_str().unwrap()]);
    let report = std::fs::read_to_string(dir.join("runs/flux-file/report.md")).unwrap();
    assert!(report.contains("| mapo |") && report.contains("Objective: flow matching"), "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// FLUX's `ae.safetensors` (the VAE alone, ldm names without a prefix; proven with
/// diffusers' `AutoencoderKL.from_single_file`): read in place with its folder it decodes as
/// the folder's VAE; converted, it gives the folder's VAE tensors bit for bit.
#[test]
fn a_bare_vae_file_is_read_and_converted() {
    let dir = tmp("ae");
    let ae = fixtures().join("tiny-flux-ae.safetensors");
    let folder = fixtures().join("tiny-flux-dev");
    let latents = dir.join("latents.safetensors");
    let z = burn::tensor::TensorData::new(mapo::sample::noise::gaussian(4, 16 * 4 * 4), [1, 16, 4, 4]);
    write_tensors(&latents, vec![("latents".into(), z)]).unwrap();
    let dev = device_name();
    let decode = |model: &Path, config: Option<&Path>, out: &Path| {
        let mut args = vec!["forward", "vae-decode", "--model", model.to_str().unwrap(), "--device", &dev];
        if let Some(c) = config {
            args.extend(["--config", c.to_str().unwrap()]);
        }
        args.extend(["--inputs", latents.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        let r = mapo_quiet(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        values(&SafeTensorFiles::open_file(out).unwrap(), "sample")
    };
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    assert_eq!(decode(&ae, Some(&folder), &a), decode(&folder, None, &b));

    let out = dir.join("folder");
    let args = ["dev", "convert", "--model", ae.to_str().unwrap(), "--config", folder.to_str().unwrap()];
    run_mapo(&[&args[..], &["--to", "diffusers", "--out", out.to_str().unwrap()]].concat());
    let original = SafeTensorFiles::open_component(&folder.join("vae"), &["diffusion_pytorch_model"]).unwrap();
    let converted = SafeTensorFiles::open_component(&out.join("vae"), &["diffusion_pytorch_model"]).unwrap();
    for n in original.names() {
        assert_eq!(values(&original, n), values(&converted, n), "{n}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
