//! SD3.5 single files in Stability's MMDiT layout (`sd3.5_medium.safetensors`: the
//! transformer under `model.diffusion_model.`, the VAE under `first_stage_model.`, the text
//! encoders under `text_encoders.{clip_l,clip_g,t5xxl}.transformer.`):
//! tests/fixtures/tiny-sd35-single.safetensors, written from tests/fixtures/tiny-sd35 and
//! proven with diffusers' `from_single_file` (every tensor equal; CLIP L's projection, which
//! SD3 files leave out, the identity: tools/golden/make_sd3_single_file.py). Read in place
//! with `--config`: the folder's outputs; a transformer-only file takes the rest from the
//! folder; converted both ways; without `--config` refused by name.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use mapo::models::io::{SafeTensorFiles, write_tensors};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapo-sd3-single-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn single() -> PathBuf {
    fixtures().join("tiny-sd35-single.safetensors")
}

fn folder() -> PathBuf {
    fixtures().join("tiny-sd35")
}

/// `forward COMPONENT` on `model` (with `--config` when given), its output file's `name`.
fn forward(component: &str, model: &Path, config: Option<&Path>, inp: &Path, out: &Path, name: &str) -> Vec<f32> {
    let dev = device_name();
    let mut args = vec!["forward", component, "--model", model.to_str().unwrap(), "--device", &dev];
    if let Some(c) = config {
        args.extend(["--config", c.to_str().unwrap()]);
    }
    args.extend(["--inputs", inp.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let r = mapo_quiet(&args);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    values(&SafeTensorFiles::open_file(out).unwrap(), name)
}

#[test]
fn an_sd3_file_is_read_in_place_with_its_folder() {
    let dir = tmp("read");
    let (inp, out) = (dir.join("in.safetensors"), dir.join("out.safetensors"));
    write_sd35_case0(&inp);
    let want = forward("transformer", &folder(), None, &inp, &out, "sample");
    let got = forward("transformer", &single(), Some(&folder()), &inp, &out, "sample");
    assert_eq!(got, want, "the transformer read from the file");

    // The VAE and the text encoders come from the file too.
    let latents = dir.join("latents.safetensors");
    let z = burn::tensor::TensorData::new(mapo::sample::noise::gaussian(3, 16 * 4 * 4), [1, 16, 4, 4]);
    write_tensors(&latents, vec![("latents".into(), z)]).unwrap();
    let want = forward("vae-decode", &folder(), None, &latents, &out, "sample");
    assert_eq!(forward("vae-decode", &single(), Some(&folder()), &latents, &out, "sample"), want);
    let ids = dir.join("ids.safetensors");
    let t = open("sd3_pipeline.safetensors");
    write_tensors(&ids, vec![("input_ids".into(), t.get("cfg.input_ids_2").unwrap().to_data_any().unwrap())]).unwrap();
    let want = forward("text-encoder-2", &folder(), None, &ids, &out, "text_embeds");
    assert_eq!(forward("text-encoder-2", &single(), Some(&folder()), &ids, &out, "text_embeds"), want);
    // CLIP L's projection, absent from the file, is the identity: text_embeds = pooled.
    write_tensors(&ids, vec![("input_ids".into(), t.get("cfg.input_ids").unwrap().to_data_any().unwrap())]).unwrap();
    let hidden = forward("text-encoder", &single(), Some(&folder()), &ids, &out, "hidden_states");
    assert_eq!(hidden, forward("text-encoder", &folder(), None, &ids, &out, "hidden_states"));

    // A transformer-only file takes everything else from the folder.
    let src = SafeTensorFiles::open_file(&single()).unwrap();
    let only = dir.join("transformer-only.safetensors");
    let tensors = src
        .names()
        .filter(|n| n.starts_with("model.diffusion_model."))
        .map(|n| (n.to_string(), src.get(n).unwrap().to_data_any().unwrap()))
        .collect();
    write_tensors(&only, tensors).unwrap();
    let got = forward("transformer", &only, Some(&folder()), &inp, &out, "sample");
    assert_eq!(got, forward("transformer", &folder(), None, &inp, &out, "sample"));

    let dev = device_name();
    let file = single();
    let args = ["forward", "transformer", "--model", file.to_str().unwrap(), "--device", &dev];
    let r = mapo_quiet(&[&args[..], &["--inputs", inp.to_str().unwrap(), "--out", out.to_str().unwrap()]].concat());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("an SD3 / SD3.5 checkpoint") && err.contains("--config"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_sd3_folder_converts_to_one_file_and_back() {
    let dir = tmp("convert");
    let written = dir.join("sd35.safetensors");
    let f = folder();
    run_mapo(&[
        "dev",
        "convert",
        "--model",
        f.to_str().unwrap(),
        "--to",
        "single-file",
        "--out",
        written.to_str().unwrap(),
    ]);
    let (ours, want) = (SafeTensorFiles::open_file(&written).unwrap(), SafeTensorFiles::open_file(&single()).unwrap());
    // The same tensors as diffusers' layout, plus CLIP L's own projection (kept: ComfyUI reads it).
    for n in want.names() {
        assert_eq!(values(&ours, n), values(&want, n), "{n}");
    }
    let extra: Vec<&str> = ours.names().filter(|n| want.get(n).is_none()).collect();
    assert_eq!(extra, ["text_encoders.clip_l.transformer.text_projection.weight"]);

    let back = dir.join("back");
    let file = single();
    let args = ["dev", "convert", "--model", file.to_str().unwrap(), "--config", f.to_str().unwrap()];
    run_mapo(&[&args[..], &["--to", "diffusers", "--out", back.to_str().unwrap()]].concat());
    for (component, stem) in
        [("transformer", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder_3", "model")]
    {
        let a = SafeTensorFiles::open_component(&f.join(component), &[stem]).unwrap();
        let b = SafeTensorFiles::open_component(&back.join(component), &[stem]).unwrap();
        for n in a.names() {
            assert_eq!(values(&a, n), values(&b, n), "{component} {n}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Train from the SD3.5 file (`model = FILE`, `model_config = DIR`) and export the result as
/// one file: read back with its folder, it gives the merged transformer's output.
#[test]
fn a_run_trains_from_and_exports_an_sd3_file() {
    let dir = tmp("train");
    let pairs = dir.join("pairs.safetensors");
    let f = folder();
    run_mapo(&[
        "dev",
        "make-pairs",
        "--model",
        f.to_str().unwrap(),
        "--pairs",
        "4",
        "--size",
        "8x6",
        "--out",
        pairs.to_str().unwrap(),
    ]);
    let (run, config) = (dir.join("run"), dir.join("run.toml"));
    let text = format!(
        "model = {:?}\nmodel_config = {f:?}\ndata = {pairs:?}\noutput_dir = {run:?}\nsteps = 2\nbatch_size = 2\n\
         method = \"mapo\"\ndevice = \"{}\"\nexport = [\"diffusers\", \"single-file\"]\nexport_dtype = \"f32\"\n\
         [lora]\nrank = 2\n[optimizer]\nlr = 1e-2\n",
        single(),
        device_name()
    );
    std::fs::write(&config, text).unwrap();
    run_mapo(&["train", "--config", config.to_str().unwrap()]);
    let exported = run.join("model.safetensors");
    let (inp, a, b) = (dir.join("in.safetensors"), dir.join("a.safetensors"), dir.join("b.safetensors"));
    write_sd35_case0(&inp);
    let got = forward("transformer", &exported, Some(&f), &inp, &a, "sample");
    let want = forward("transformer", &run.join("transformer"), None, &inp, &b, "sample");
    let base = forward("transformer", &f, None, &inp, &b, "sample");
    eprintln!("exported vs merged {:.2e}; trained vs base {:.2e}", rel_err(&got, &want), rel_err(&want, &base));
    assert!(rel_err(&got, &want) < 1e-6 && rel_err(&want, &base) > 1e-5);
    std::fs::remove_dir_all(&dir).unwrap();
}
