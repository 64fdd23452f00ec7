//! The third round of hostile inputs (docs/testing.md): each defect reproduced and now
//! getting the right outcome. Aborts: an empty loss batch, images of extreme aspect ratio,
//! configs whose shapes would allocate terabytes. Silent wrong results: LoRA files with
//! NaN scales, mistyped metadata or half adapters; evaluation images reused under other
//! settings; non-finite scores; truncated JPEGs; sweep names that collide. Mixing: locked
//! score and cache outputs, experiment names that are paths, runs killed before their
//! first checkpoint. Checkpoint pickles: a 21-byte stem, a declared size beyond the file,
//! a pickled object that is not a tensor.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use burn::tensor::{DType, Device, TensorData};
use common::*;

use common::mapo_quiet as mapo;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Exit code 1 (a clean error) whose message contains `what`.
fn refused(o: &Output, what: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "expected a clean error containing {what:?}:\n{e}");
    assert!(e.contains(what), "expected {what:?} in:\n{e}");
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mapo-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn set_json(path: &Path, key: &str, value: serde_json::Value) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(path, v.to_string()).unwrap();
}

/// A safetensors file's tensors (name → dtype, shape, bytes) and metadata, to edit and
/// write back.
type Tensors = Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>;

fn edit_safetensors(src: &Path, dst: &Path, edit: impl FnOnce(&mut Tensors, &mut HashMap<String, String>)) {
    let bytes = std::fs::read(src).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = meta.metadata().clone().unwrap_or_default();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Tensors =
        file.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut tensors, &mut metadata);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(dst, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
}

#[test]
fn a_loss_batch_without_rows_is_an_error_not_a_panic() {
    let dir = tmp("loss");
    let inputs = dir.join("inputs.safetensors");
    let empty = || TensorData::new(Vec::<f32>::new(), [0, 4, 2, 2]);
    mapo::models::io::write_tensors(&inputs, vec![("model_pred".into(), empty()), ("target".into(), empty())]).unwrap();
    let out = dir.join("out.safetensors");
    let run = mapo(
        &["forward", "loss", "--method", "mapo", "--device", "flex"]
            .into_iter()
            .chain(["--inputs", inputs.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    refused(&run, "no rows");
}

fn png(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + y) as u8, (y % 251) as u8, 128]));
    img.save(path).unwrap();
}

/// `mapo score`: a 1×300000 strip (resized to a 224 short side it would be 15 G pixels) is
/// scored in bounded work; a truncated JPEG is an error row; an input row's stale "error"
/// does not survive next to a new score; non-finite scores are errors, not `null` scores.
#[test]
fn scoring_bounds_its_work_and_never_reports_a_bad_score_as_one() {
    let dir = tmp("score");
    png(&dir.join("strip.png"), 1, 300_000);
    let mut jpeg = Vec::new();
    image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 9]))
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    std::fs::write(dir.join("cut.jpg"), &jpeg[..jpeg.len() * 2 / 3]).unwrap();
    let pairs = dir.join("pairs.jsonl");
    std::fs::write(
        &pairs,
        "{\"image\": \"strip.png\", \"prompt\": \"a strip\", \"error\": \"stale\"}\n\
         {\"image\": \"cut.jpg\", \"prompt\": \"a cut image\"}\n",
    )
    .unwrap();
    let (clip, out) = (fixtures().join("tiny-clip"), dir.join("scores.jsonl"));
    let score = |extra: &[&str]| {
        let mut args = vec!["score", "--pairs", pairs.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend(["--device", "flex"]);
        args.extend(extra);
        mapo(&args)
    };
    let run = score(&["--scorer", "clip", "--model", clip.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    let rows: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(rows[0]["score"].as_f64().is_some_and(f64::is_finite) && rows[0].get("error").is_none(), "{}", rows[0]);
    assert!(rows[1]["score"].is_null(), "{}", rows[1]);
    assert!(rows[1]["error"].as_str().unwrap().contains("truncated JPEG"), "{}", rows[1]);
    assert!(stderr(&run).contains("1 images scored"), "{}", stderr(&run));

    // An aesthetic MLP with an infinite weight: every score is an error row.
    let bad = fixtures().join("pth/nonfinite.pth");
    let run = score(&["--scorer", "aesthetic", "--model", bad.to_str().unwrap(), "--clip", clip.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = std::fs::read_to_string(&out).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(first["score"].is_null() && first["error"].as_str().unwrap().contains("not a finite number"), "{first}");
    assert!(stderr(&run).contains("0 images scored"), "{}", stderr(&run));

    // One writer per output: a live process's lock is respected.
    std::fs::write(dir.join("scores.jsonl.lock"), std::process::id().to_string()).unwrap();
    refused(&score(&["--scorer", "clip", "--model", clip.to_str().unwrap()]), "in use by another mapo process");
}

/// `mapo cache`'s transform: a 1×10000 image at 1024 (31 GB once resized) is a skipped row
/// with a reason, not an abort; an ordinary one still passes.
#[test]
fn an_extreme_aspect_ratio_is_a_skipped_row() {
    use mapo::data::parquet::Pair;
    use mapo::data::transform::{TransformConfig, prepare};
    let encode = |w: u32, h: u32| {
        let mut bytes = Vec::new();
        image::RgbImage::new(w, h).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
        bytes
    };
    let pair = |chosen: Vec<u8>| Pair {
        file: "pairs.parquet".into(),
        row: 7,
        caption: "x".into(),
        chosen,
        rejected: encode(64, 48),
        label: None,
    };
    let config = TransformConfig { resolution: 1024, ..TransformConfig::default() };
    let err = prepare(&pair(encode(1, 10_000)), &config, 0, 0).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("pairs.parquet row 7") && msg.contains("aspect ratio"), "{msg}");
    let small = TransformConfig { resolution: 32, ..TransformConfig::default() };
    assert!(prepare(&pair(encode(40, 32)), &small, 0, 0).is_ok());
}

/// Configs whose shapes would allocate terabytes are refused by the shape check, before
/// any placeholder of their size exists.
#[test]
fn absurd_config_sizes_are_refused_before_allocating() {
    let dir = tmp("configs");
    let tiny = fixtures().join("tiny-sdxl");
    let text = dir.join("text_encoder");
    copy_dir(&tiny.join("text_encoder"), &text);
    set_json(&text.join("config.json"), "vocab_size", 1_000_000_000_000u64.into());
    let err = mapo::models::clip::ClipTextModel::from_dir(&text, &Device::default(), DType::F32, false).unwrap_err();
    assert!(format!("{err:#}").contains("token_embedding.weight: expected [1000000000000"), "{err:#}");

    let unet = dir.join("unet");
    copy_dir(&tiny.join("unet"), &unet);
    set_json(&unet.join("config.json"), "projection_class_embeddings_input_dim", 100_000_000_000u64.into());
    let err = mapo::models::unet::UNet2DConditionModel::from_dir(&unet, &Device::default(), DType::F32).unwrap_err();
    assert!(format!("{err:#}").contains("add_embedding.linear_1.weight: expected ["), "{err:#}");

    // HPS (open_clip config): checked against the pickle's declared shapes, nothing read.
    let config = dir.join("hps.json");
    std::fs::copy(fixtures().join("tiny-hps.json"), &config).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    v["text_cfg"]["vocab_size"] = 1_000_000_000_000u64.into();
    std::fs::write(&config, v.to_string()).unwrap();
    let pairs = fixtures().join("tiny-clip/pairs.jsonl");
    let run = mapo(&[
        "score",
        "--scorer",
        "hps",
        "--model",
        fixtures().join("tiny-hps.pt").to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--tokenizer",
        tiny.join("tokenizer").to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
        "--out",
        dir.join("hps.jsonl").to_str().unwrap(),
        "--device",
        "flex",
    ]);
    refused(&run, "token_embedding.weight");
}

/// LoRA files that used to load into a silently wrong model, each now refused by
/// `mapo lora convert` (which reads them as generate, eval and forward do).
#[test]
fn lora_files_with_wrong_scales_metadata_or_halves_are_refused() {
    let dir = tmp("lora");
    let (peft, kohya) = (fixtures().join("lora/peft.safetensors"), fixtures().join("lora/kohya.safetensors"));
    let layer = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k";
    let convert = |file: &Path, extra: &[&str]| {
        let out = dir.join("out.safetensors");
        let mut args = vec!["lora", "convert", "--in", file.to_str().unwrap(), "--to", "kohya"];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        mapo(&args)
    };
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let case = |name: &str, src: &Path, edit: &dyn Fn(&mut Tensors, &mut HashMap<String, String>)| {
        let path = dir.join(format!("{name}.safetensors"));
        edit_safetensors(src, &path, |t, m| edit(t, m));
        path
    };
    let set_meta = |m: &mut HashMap<String, String>, key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(&m["lora_adapter_metadata"]).unwrap();
        v[key] = value;
        m.insert("lora_adapter_metadata".into(), v.to_string());
    };
    // The fixture itself converts.
    assert!(convert(&peft, &[]).status.success());

    let nan_alpha = case("nan-alpha", &kohya, &|t, _| {
        let alpha = t.iter_mut().find(|(n, ..)| n.ends_with(".alpha")).unwrap();
        alpha.3 = f32s(&[f32::NAN]);
    });
    refused(&convert(&nan_alpha, &[]), "not a finite number");

    let rank0 = case("rank0", &peft, &|t, _| {
        for (n, _, shape, bytes) in t.iter_mut().filter(|(n, ..)| n.starts_with(&format!("{layer}.lora_"))) {
            if n.ends_with("lora_A.weight") {
                shape[0] = 0
            } else {
                shape[1] = 0
            }
            bytes.clear();
        }
    });
    refused(&convert(&rank0, &[]), "rank 0");

    for (name, key, value, what) in [
        ("alpha-string", "unet.lora_alpha", serde_json::json!("8"), "lora_alpha is \"8\"; expected a number"),
        (
            "rslora-string",
            "unet.use_rslora",
            serde_json::json!("true"),
            "use_rslora is \"true\"; expected true or false",
        ),
    ] {
        let file = case(name, &peft, &|_, m| set_meta(m, key, value.clone()));
        refused(&convert(&file, &[]), what);
    }
    let list = case("meta-list", &peft, &|_, m| {
        m.insert("lora_adapter_metadata".into(), "[1, 2]".into());
    });
    refused(&convert(&list, &[]), "expected a JSON object");

    let dora = case("dora", &peft, &|t, _| {
        t.push((format!("{layer}.lora_magnitude_vector.weight"), safetensors::Dtype::F32, vec![2], f32s(&[1.0, 1.0])));
    });
    refused(&convert(&dora, &[]), "DoRA");
    let orphan = case("orphan", &peft, &|t, _| t.retain(|(n, ..)| *n != format!("{layer}.lora_A.weight")));
    refused(&convert(&orphan, &[]), "belong to no adapter");

    let nan_weight = case("nan-weight", &peft, &|t, _| {
        let b = t.iter_mut().find(|(n, ..)| *n == format!("{layer}.lora_B.weight")).unwrap();
        b.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    refused(&convert(&nan_weight, &[]), "holds NaN");

    // A module the model does not have, with --model: refused, naming it.
    let foreign = case("foreign", &peft, &|t, _| {
        for (n, ..) in t.iter_mut().filter(|(n, ..)| n.starts_with(&format!("{layer}.lora_"))) {
            *n = n.replace(".to_k.", ".to_zz.");
        }
    });
    let model = fixtures().join("tiny-sdxl");
    refused(&convert(&foreign, &["--model", model.to_str().unwrap()]), "to_zz (no such layer)");
}

/// `mapo eval` reuses a cached image only where the same settings made it.
#[test]
fn eval_refuses_a_folder_of_images_made_with_other_settings() {
    let dir = tmp("eval");
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "a red square\n").unwrap();
    let out = dir.join("eval");
    let eval = |steps: &str| {
        mapo(&[
            "eval",
            "--model",
            fixtures().join("tiny-sdxl").to_str().unwrap(),
            "--prompts",
            prompts.to_str().unwrap(),
            "--scorer",
            &format!("clip={}", fixtures().join("tiny-clip").display()),
            "--steps",
            steps,
            "--device",
            "flex",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    assert!(eval("2").status.success());
    assert!(eval("2").status.success(), "the same settings reuse the images");
    refused(&eval("3"), "steps: 2 then, 3 now");
    std::fs::write(&prompts, "a blue circle\n").unwrap();
    refused(&eval("2"), "prompt 0");
}

fn experiment(dir: &Path, name: &str, sweep: &str) -> PathBuf {
    let file = dir.join("exp.toml");
    std::fs::write(
        &file,
        format!(
            "name = {name:?}\nruns_dir = {:?}\nmethods = [\"mapo\"]\n[model]\nbuiltin = \"toy\"\n[data]\n\
             generated = \"style\"\n[train]\nsteps = 2\n[sweep]\n{sweep}\n",
            dir.join("runs")
        ),
    )
    .unwrap();
    file
}

/// Experiment files: a name is one folder inside runs_dir; sweep values whose run names
/// collide are an error; a sweep past the cap is refused before it is planned.
#[test]
fn experiment_names_and_sweeps_are_checked() {
    use mapo::experiment::config::load;
    let dir = tmp("experiment");
    for name in ["../../x", "/tmp/x", "..", ".", "", "a/b"] {
        let err = load(&experiment(&dir, name, ""), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("a folder inside runs_dir"), "{name:?}: {err:#}");
    }
    let collide = experiment(&dir, "ok", "\"train.seed\" = [1]\n\"pretrain.lr\" = [\"1e-3\", \"1e_3\"]");
    let err = load(&collide, &[]).map(|(_, runs)| runs.len());
    assert!(err.is_err(), "two runs planned as {err:?}");
    let big: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    let sweep = format!("\"train.seed\" = [{}]\n\"pretrain.seed\" = [{}]", big.join(","), big.join(","));
    let t0 = std::time::Instant::now();
    let err = load(&experiment(&dir, "big", &sweep), &[]).unwrap_err();
    assert!(format!("{err:#}").contains("more than 10000 runs"), "{err:#}");
    assert!(t0.elapsed().as_secs() < 10, "refused before planning");
}

/// The cache folder has one writer: a second `mapo cache` on it is refused while the first
/// holds it.
#[test]
fn a_cache_folder_has_one_writer() {
    let dir = tmp("cache");
    let out = dir.join("cache");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(".mapo.lock"), std::process::id().to_string()).unwrap();
    let run = cache_tiny(&fixtures().join("parquet/pairs.parquet"), &out, &[]);
    refused(&run, "in use by another mapo process");
    assert!(!out.join("index.json").exists());
}

/// Torch checkpoints: a 21-byte stem reads; a tensor declared larger than the file is
/// refused before it is inflated; a pickled object other than tensors is refused by name.
#[test]
fn checkpoint_pickles_are_read_or_refused_by_name() {
    use mapo::models::pth::PthFile;
    let pth = fixtures().join("pth");
    let file = PthFile::open(&pth.join("abcdefghijklmnopqrstu.pth"), None).unwrap();
    assert_eq!(file.f32("layers.0.weight").unwrap(), (vec![0.5, -2.0], vec![1, 2]));
    let bomb = PthFile::open(&pth.join("bomb.pth"), None).unwrap();
    let err = bomb.f32("layers.0.weight").unwrap_err();
    assert!(format!("{err:#}").contains("more than the"), "{err:#}");
    let err = PthFile::open(&pth.join("foreign.pth"), None).err().expect("refused");
    assert!(format!("{err:#}").contains("pickles torch.device"), "{err:#}");
}

/// A prompt longer than CLIP's 77 tokens is truncated with diffusers' warning, not silently.
#[test]
fn a_prompt_past_77_tokens_is_truncated_with_a_warning() {
    let dir = tmp("long-prompt");
    let long = vec!["red"; 90].join(" ");
    let run = mapo(&[
        "generate",
        "--model",
        fixtures().join("tiny-sdxl").to_str().unwrap(),
        "--prompt",
        &long,
        "--steps",
        "1",
        "--device",
        "flex",
        "--out",
        dir.join("x.png").to_str().unwrap(),
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("is 90 tokens; CLIP reads 75 and the rest is truncated"), "{}", stderr(&run));
}
