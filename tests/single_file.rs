//! SDXL single-file checkpoints (A1111/ComfyUI layout): a diffusers folder written as one
//! file in Stability's names and read back gives every tensor bit for bit; the file's
//! layout is the original one (sgm UNet, ldm VAE with 1×1-conv attention, open_clip bigG
//! with fused in_proj and a right-multiplied text_projection); a file of another
//! architecture is named. diffusers' own reading of mapo's file: tools/golden/check_single_file.py.

mod common;

use std::path::PathBuf;

use common::*;
use mapo::models::io::SafeTensorFiles;
use mapo::models::single_file::convert::{to_diffusers, to_single_file};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mapo-single-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn f32s(files: &SafeTensorFiles, name: &str) -> Vec<f32> {
    let data = files.get(name).unwrap().to_data().unwrap().convert::<f32>();
    data.try_to_vec::<f32>().unwrap()
}

/// Every tensor of every component of `b` as in `a` (compared in f32: the fixture's f16 UNet
/// and bf16 VAE convert exactly), names and shapes included.
fn assert_same_components(a: &std::path::Path, b: &std::path::Path) {
    for (component, stem) in [
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
        ("text_encoder_2", "model"),
    ] {
        let x = SafeTensorFiles::open_component(&a.join(component), &[stem]).unwrap();
        let y = SafeTensorFiles::open_component(&b.join(component), &[stem]).unwrap();
        // transformers 5 may save CLIP-L without `text_model.`; mapo writes it with.
        let plain = |n: &str| n.strip_prefix("text_model.").unwrap_or(n).to_string();
        let mut names: Vec<String> = x.names().map(plain).collect();
        let mut other: Vec<String> = y.names().map(plain).collect();
        names.sort();
        other.sort();
        assert_eq!(names, other, "{component}");
        let full = |f: &SafeTensorFiles, n: &str| {
            if f.shape(n).is_some() { n.to_string() } else { format!("text_model.{n}") }
        };
        for n in &names {
            let (nx, ny) = (full(&x, n), full(&y, n));
            assert_eq!(x.shape(&nx), y.shape(&ny), "{component} {n}");
            assert!(f32s(&x, &nx) == f32s(&y, &ny), "{component} {n} differs");
        }
    }
}

#[test]
fn a_folder_round_trips_through_one_file_bit_for_bit() {
    let dir = tmp("round");
    let tiny = fixtures().join("tiny-sdxl");
    let file = dir.join("tiny.safetensors");
    to_single_file(&tiny, &file, burn::tensor::DType::F32).unwrap();

    let single = SafeTensorFiles::open_file(&file).unwrap();
    let shape = |n: &str| single.shape(n).unwrap_or_else(|| panic!("no {n}")).to_vec();
    assert_eq!(shape("model.diffusion_model.input_blocks.0.0.weight"), [16, 4, 3, 3]);
    assert_eq!(shape("model.diffusion_model.label_emb.0.0.weight")[0], 64);
    // The last up block without attention: its upsampler follows the resnet (index 1).
    assert!(single.names().any(|n| n.starts_with("model.diffusion_model.output_blocks.2.2.conv.")));
    assert!(single.names().any(|n| n.starts_with("model.diffusion_model.output_blocks.5.2.conv.")));
    let vae_attn = shape("first_stage_model.encoder.mid.attn_1.q.weight");
    assert_eq!((vae_attn.len(), &vae_attn[2..]), (4, &[1usize, 1][..]), "ldm keeps 1×1 convolutions");
    let bigg = "conditioner.embedders.1.model.";
    let in_proj = shape(&format!("{bigg}transformer.resblocks.0.attn.in_proj_weight"));
    assert_eq!(in_proj[0], 3 * in_proj[1], "q, k and v stacked");
    assert!(single.shape(&format!("{bigg}text_projection")).is_some());
    assert!(single.shape("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight").is_some());

    // The bigG projection is the transpose of transformers' weight; q is in_proj's first rows.
    let te2 = SafeTensorFiles::open_file(&tiny.join("text_encoder_2/model.safetensors")).unwrap();
    let hf = f32s(&te2, "text_projection.weight");
    let sgm = f32s(&single, &format!("{bigg}text_projection"));
    let [rows, cols] =
        [te2.shape("text_projection.weight").unwrap()[0], te2.shape("text_projection.weight").unwrap()[1]];
    for (r, c) in [(0, 0), (1, 0), (rows - 1, cols - 1), (0, cols - 1)] {
        assert_eq!(hf[r * cols + c], sgm[c * rows + r], "text_projection ({r}, {c})");
    }
    let q = f32s(&te2, "text_model.encoder.layers.0.self_attn.q_proj.weight");
    assert_eq!(&f32s(&single, &format!("{bigg}transformer.resblocks.0.attn.in_proj_weight"))[..q.len()], &q[..]);

    // Back to a folder: every tensor of every component as the original.
    let back = dir.join("back");
    let report = to_diffusers(&file, &tiny, &back, None).unwrap();
    assert_eq!(report.len(), 4, "{report:?}");
    assert_same_components(&tiny, &back);

    // The same tensors as the file diffusers' own (config-aware) conversion writes, which
    // diffusers' from_single_file reads as the folder (tools/golden/make_single_file.py).
    let golden = SafeTensorFiles::open_file(&fixtures().join("tiny-sdxl-single.safetensors")).unwrap();
    let (mut ours, mut theirs): (Vec<&str>, Vec<&str>) = (single.names().collect(), golden.names().collect());
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "the same keys as diffusers' conversion");
    for n in ours {
        assert_eq!(single.shape(n), golden.shape(n), "{n}");
        assert!(f32s(&single, n) == f32s(&golden, n), "{n} differs from diffusers' conversion");
    }
    let from_golden = dir.join("from-golden");
    to_diffusers(&fixtures().join("tiny-sdxl-single.safetensors"), &tiny, &from_golden, None).unwrap();
    assert_same_components(&tiny, &from_golden);

    // The folder it wrote loads and runs as the original does.
    let cases = common::open("unet_cases.safetensors");
    let device = device();
    let (orig, _) =
        mapo::models::unet::UNet2DConditionModel::from_dir(&tiny.join("unet"), &device, burn::tensor::DType::F32)
            .unwrap();
    let (conv, _) =
        mapo::models::unet::UNet2DConditionModel::from_dir(&back.join("unet"), &device, burn::tensor::DType::F32)
            .unwrap();
    let (a, b) = (run_unet_case(&orig, &cases, "case0", &device), run_unet_case(&conv, &cases, "case0", &device));
    assert_eq!(to_vec(a), to_vec(b));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A UNet-only file takes the other components from `--config`; an SD1.x file is named.
#[test]
fn partial_and_foreign_files_are_handled_by_name() {
    let dir = tmp("partial");
    let tiny = fixtures().join("tiny-sdxl");
    let full = dir.join("full.safetensors");
    to_single_file(&tiny, &full, burn::tensor::DType::F32).unwrap();
    let unet_only = dir.join("unet-only.safetensors");
    let sd15 = dir.join("sd15.safetensors");
    let files = SafeTensorFiles::open_file(&full).unwrap();
    let keep = |n: &str| n.starts_with("model.diffusion_model.");
    let tensors: Vec<(String, burn::tensor::TensorData)> =
        files.names().filter(|n| keep(n)).map(|n| (n.to_string(), files.get(n).unwrap().to_data().unwrap())).collect();
    mapo::models::io::write_tensors(&unet_only, tensors).unwrap();
    let report = to_diffusers(&unet_only, &tiny, &dir.join("from-unet"), None).unwrap();
    assert!(report.iter().any(|l| l.starts_with("vae: not in the file")), "{report:?}");
    assert!(dir.join("from-unet/vae/config.json").is_file());

    let attn = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
    let sd = vec![(attn.to_string(), burn::tensor::TensorData::new(vec![0f32; 320 * 768], [320, 768]))];
    mapo::models::io::write_tensors(&sd15, sd).unwrap();
    let err = to_diffusers(&sd15, &tiny, &dir.join("x"), None).unwrap_err();
    assert!(format!("{err:#}").contains("this is an SD1.x checkpoint"), "{err:#}");
    assert!(format!("{err:#}").contains("768-wide cross-attention"), "{err:#}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--model FILE`: the single file read in place through remap files (no weights copied)
/// gives the folder's outputs for the UNet, the VAE and both text encoders (bigG's fused
/// q/k/v and transposed projection included). The tiny file is not SDXL base, so the
/// built-in configs refuse it, naming the way out.
#[test]
fn a_single_file_is_read_in_place() {
    use burn::tensor::{DType, Int, Tensor, TensorData};
    use mapo::models::clip::ClipTextModel;
    use mapo::models::folder::component_dir;
    use mapo::models::single_file::builtin::folder_with;
    let (tiny, file) = (fixtures().join("tiny-sdxl"), fixtures().join("tiny-sdxl-single.safetensors"));
    let folder = folder_with(&file, Some(&tiny)).unwrap();
    let copied = walk(&folder).into_iter().filter(|p| p.extension().is_some_and(|e| e == "safetensors")).count();
    assert_eq!(copied, 0, "nothing copied");
    let device = device();
    let unet = |m: &std::path::Path| {
        mapo::models::unet::UNet2DConditionModel::from_dir(&component_dir(m, "unet").unwrap(), &device, DType::F32)
            .unwrap()
            .0
    };
    let cases = common::open("unet_cases.safetensors");
    let (a, b) = (
        run_unet_case(&unet(&tiny), &cases, "case0", &device),
        run_unet_case(&unet(&folder), &cases, "case0", &device),
    );
    assert_eq!(to_vec(a), to_vec(b), "UNet");
    let vae = |m: &std::path::Path| {
        mapo::models::vae::AutoencoderKL::from_dir(&component_dir(m, "vae").unwrap(), &device, DType::F32).unwrap().0
    };
    let latents = common::open("vae_cases.safetensors").float::<4>("case0.latents", &device, DType::F32).unwrap();
    assert_eq!(to_vec(vae(&tiny).decode(latents.clone())), to_vec(vae(&folder).decode(latents)), "VAE");
    let ids: Vec<i64> = (0..77).map(|i| (i * 37) % 1000).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, 77]), &device);
    for (sub, second) in [("text_encoder", false), ("text_encoder_2", true)] {
        let enc = |m: &std::path::Path| {
            ClipTextModel::from_dir(&component_dir(m, sub).unwrap(), &device, DType::F32, second).unwrap().0
        };
        let (x, y) = (enc(&tiny).forward(ids.clone()), enc(&folder).forward(ids.clone()));
        assert_eq!(to_vec(x.penultimate), to_vec(y.penultimate), "{sub}");
        if second {
            assert_eq!(to_vec(x.text_embeds.unwrap()), to_vec(y.text_embeds.unwrap()), "{sub} projection");
        }
    }
    let run = mapo_quiet(&["generate", "--model", file.to_str().unwrap(), "--prompt", "x", "--out", "/tmp/never.png"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert!(err.contains("not recognised as SDXL base") && err.contains("mapo dev convert --to diffusers"), "{err}");

    // With --config (a folder of its architecture) it generates as the folder does.
    let dir = tmp("in-place");
    let image = |model: &std::path::Path, extra: &[&str], out: &str| {
        let path = dir.join(out);
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", "a cat", "--steps", "2"];
        args.extend(["--device", "flex", "--out", path.to_str().unwrap()]);
        args.extend(extra);
        run_mapo(&args);
        std::fs::read(path).unwrap()
    };
    let from_file = image(&file, &["--config", tiny.to_str().unwrap()], "file.png");
    assert!(from_file == image(&tiny, &[], "folder.png"), "the single file generates the folder's image");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

/// `export = ["diffusers", "single-file"]`: a finished run also writes the whole pipeline
/// with its UNet as one file, which converts back to the base model with the run's UNet:
/// generating from it gives the image `--unet RUN/unet` gives.
#[test]
fn a_run_exports_a_single_file_that_generates_its_images() {
    let dir = tmp("export");
    let tiny = fixtures().join("tiny-sdxl");
    let pairs = dir.join("pairs.safetensors");
    run_mapo(&["make-pairs", "--model", tiny.to_str().unwrap(), "--pairs", "4", "--out", pairs.to_str().unwrap()]);
    let config = dir.join("run.toml");
    let run = dir.join("run");
    std::fs::write(
        &config,
        format!(
            "model = {tiny:?}\ndata = {pairs:?}\noutput_dir = {run:?}\nmethod = \"mapo\"\nsteps = 2\nbatch_size = 2\n\
             device = \"flex\"\nexport = [\"diffusers\", \"single-file\"]\nexport_dtype = \"f32\"\n[optimizer]\nlr = 1e-3\n"
        ),
    )
    .unwrap();
    run_mapo(&["train", "--config", config.to_str().unwrap()]);
    let back = dir.join("back");
    to_diffusers(&run.join("model.safetensors"), &tiny, &back, None).unwrap();
    let image = |extra: &[&str], out: &str| {
        let path = dir.join(out);
        let mut args = vec!["generate", "--prompt", "a red square", "--steps", "2", "--device", "flex"];
        args.extend(extra);
        args.extend(["--out", path.to_str().unwrap()]);
        run_mapo(&args);
        std::fs::read(path).unwrap()
    };
    let from_run = image(&["--model", tiny.to_str().unwrap(), "--unet", run.join("unet").to_str().unwrap()], "a.png");
    let from_file = image(&["--model", back.to_str().unwrap()], "b.png");
    let base = image(&["--model", tiny.to_str().unwrap()], "c.png");
    assert!(from_run == from_file, "the exported file generates the run's image");
    assert!(from_run != base, "and the run changed the model");
    let _ = std::fs::remove_dir_all(&dir);
}
