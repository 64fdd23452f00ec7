//! The reliability defects found by trying mapo as a careful user would, each reproduced
//! and now getting the right outcome: the output folder is protected, absurd options are
//! refused when read, bad inputs are errors naming what is wrong, leftovers of killed
//! writes are cleaned up and never followed outside their folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

fn mapo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mapo")).args(args).env("MAPO_QUIET_DEVICE", "1").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A temp folder with a pairs file and a 2-step MaPO config writing to `<dir>/run`.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("mapo-rel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pairs = dir.join("pairs.safetensors");
    let model = fixtures().join("tiny-sdxl");
    let out =
        mapo(&["make-pairs", "--model", model.to_str().unwrap(), "--pairs", "4", "--out", pairs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let config = dir.join("run.toml");
    std::fs::write(
        &config,
        format!(
            "model = {model:?}\ndata = {pairs:?}\noutput_dir = {:?}\nmethod = \"mapo\"\nsteps = 2\nbatch_size = 2\n\
             checkpoint_every = 1\nkeep_checkpoints = 5\ndevice = \"flex\"\n[optimizer]\nlr = 1e-3\n",
            dir.join("run")
        ),
    )
    .unwrap();
    (dir, config)
}

fn train(config: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--config", config.to_str().unwrap()];
    args.extend(extra);
    mapo(&args)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Defect 1: A new run in a folder holding a finished one is refused, and the old run is left
/// exactly as it was; `--overwrite` moves it aside (never deletes) and starts afresh.
#[test]
fn a_second_run_never_mixes_into_a_finished_one() {
    let (dir, config) = setup("mix");
    let run = dir.join("run");
    assert!(train(&config, &[]).status.success());
    let before = (read(&run.join("config.toml")), read(&run.join("metrics.jsonl")));
    let out = train(&config, &["--set", "seed=9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("holds another run"), "{}", stderr(&out));
    assert_eq!((read(&run.join("config.toml")), read(&run.join("metrics.jsonl"))), before, "the old run was touched");
    assert_eq!(mapo::train::checkpoint::list(&run).unwrap().len(), 2);

    let out = train(&config, &["--set", "seed=9", "--overwrite"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let aside = dir.join("run.previous-1");
    assert_eq!(read(&aside.join("metrics.jsonl")), before.1, "the moved run differs");
    assert!(aside.join("unet").is_dir() && aside.join("checkpoint-2").is_dir());
    assert!(String::from_utf8_lossy(&read(&run.join("config.toml"))).contains("seed = 9"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Defect 1: A run that cannot start (a truncated model file) leaves the folder untouched, even
/// with --overwrite; resuming with other math-changing settings is refused, listing them.
#[test]
fn failed_starts_and_changed_resumes_leave_the_run_alone() {
    let (dir, config) = setup("start");
    let run = dir.join("run");
    assert!(train(&config, &[]).status.success());
    let before = read(&run.join("metrics.jsonl"));
    let broken = dir.join("broken-model");
    copy_dir(&fixtures().join("tiny-sdxl"), &broken);
    let weights = broken.join("unet/diffusion_pytorch_model.safetensors");
    let bytes = read(&weights);
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let out = train(&config, &["--set", &format!("model={broken:?}"), "--overwrite"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("diffusion_pytorch_model.safetensors"), "{}", stderr(&out));
    assert_eq!(read(&run.join("metrics.jsonl")), before);
    assert!(!dir.join("run.previous-1").exists(), "a failed start moved the run");

    let out = train(&config, &["--resume", "latest", "--set", "optimizer.lr=2e-3", "--set", "method=sft"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("method: \"mapo\" → \"sft\"") && err.contains("optimizer"), "{err}");
    assert_eq!(read(&run.join("metrics.jsonl")), before);
    // Changing what does not alter the math (more steps) resumes.
    let out = train(&config, &["--resume", "latest", "--set", "steps=3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Defect 1: One process per folder: a lock held by a live process refuses the second run; a lock
/// left by a dead process is taken over.
#[test]
fn the_output_folder_is_locked() {
    let (dir, config) = setup("lock");
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    // This test process is alive: its PID in the lock stands for a concurrent run.
    std::fs::write(run.join(".mapo.lock"), std::process::id().to_string()).unwrap();
    let out = train(&config, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("in use by another mapo process"), "{}", stderr(&out));
    assert!(!run.join("config.toml").exists());
    std::fs::write(run.join(".mapo.lock"), "4194999").unwrap();
    let out = train(&config, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("stale lock"));
    assert!(!run.join(".mapo.lock").exists(), "the lock outlived the run");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Defect 2: lr 1e39 is refused when the config is read, before the folder exists; the library's
/// own guard (weights made non-finite by an update are never saved) is tested in train_loop.
#[test]
fn absurd_options_are_refused_when_read() {
    let (dir, config) = setup("options");
    for (set, want) in [
        ("optimizer.lr=1e39", "optimizer.lr"),
        ("optimizer.lr=-1e-4", "optimizer.lr"),
        ("optimizer.beta2=1.5", "optimizer.beta2"),
        ("max_grad_norm=-1", "max_grad_norm"),
        ("data_transform.flip=2", "data_transform.flip"),
        ("data_transform.caption_dropout=5", "data_transform.caption_dropout"),
        ("data_transform.resolution=0", "data_transform.resolution"),
        ("batch_size=100000", "batch_size"),
        ("method_params.beta=nan", "method_params.beta"),
    ] {
        let out = train(&config, &["--set", set]);
        assert_eq!(out.status.code(), Some(1), "{set}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{set}: {}", stderr(&out));
    }
    assert!(!dir.join("run").exists(), "a refused config created the output folder");
    let model = fixtures().join("tiny-sdxl");
    let m = model.to_str().unwrap();
    let parquet = fixtures().join("parquet/pairs.parquet");
    let p = parquet.to_str().unwrap();
    let cache = dir.join("cache");
    let c = cache.to_str().unwrap();
    let png = dir.join("x.png");
    for (args, want) in [
        (vec!["cache", "--model", m, "--data", p, "--out", c, "--resolution", "0"], "resolution"),
        (vec!["cache", "--model", m, "--data", p, "--out", c, "--flip", "2"], "flip"),
        (vec!["cache", "--model", m, "--data", p, "--out", c, "--caption-dropout", "5"], "caption_dropout"),
        (vec!["cache", "--model", m, "--data", p, "--out", c, "--max-samples", "0"], "--max-samples 0"),
        (vec!["generate", "--model", m, "--prompt", "a", "--width", "0", "--out", png.to_str().unwrap()], "--width"),
        (vec!["generate", "--model", m, "--prompt", "a", "--steps", "0", "--out", png.to_str().unwrap()], "--steps"),
    ] {
        let out = mapo(&[&args[..], &["--device", "flex"]].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Defect 3: Inputs of the other components and data made for another model: errors naming the
/// tensor, never a panic inside Burn.
#[test]
fn bad_inputs_of_every_component_are_errors() {
    use burn::tensor::TensorData;
    let (dir, config) = setup("inputs");
    let run = |component: &str, tensors: Vec<(&str, TensorData)>| {
        let inp = dir.join("in.safetensors");
        mapo::models::io::write_tensors(&inp, tensors.into_iter().map(|(n, d)| (n.to_string(), d)).collect()).unwrap();
        let out = forward_tiny(component, &inp, &dir.join("out.safetensors"));
        assert_eq!(out.status.code(), Some(1), "{component}: {}", stderr(&out));
        stderr(&out)
    };
    let ids = |v: Vec<i64>, shape: Vec<usize>| TensorData::new(v, shape);
    let f = |shape: Vec<usize>, x: f32| TensorData::new(vec![x; shape.iter().product()], shape);
    let vocab = 1000; // tests/fixtures/tiny-sdxl/text_encoder/config.json
    assert!(
        run("text-encoder", vec![("input_ids", ids(vec![vocab; 77], vec![1, 77]))]).contains("outside the vocabulary")
    );
    assert!(
        run("text-encoder-2", vec![("input_ids", ids(vec![-1; 77], vec![1, 77]))]).contains("outside the vocabulary")
    );
    assert!(run("text-encoder", vec![("input_ids", ids(vec![], vec![0, 77]))]).contains("empty dimension"));
    assert!(run("text-encoder", vec![("input_ids", ids(vec![1; 200], vec![1, 200]))]).contains("positions"));
    assert!(run("vae-encode", vec![("sample", f(vec![1, 4, 32, 32], 0.0))]).contains("sample: expected shape"));
    assert!(run("vae-encode", vec![("sample", f(vec![1, 3, 30, 30], 0.0))]).contains("multiples of"));
    assert!(run("vae-decode", vec![("latents", f(vec![0, 4, 8, 8], 0.0))]).contains("empty dimension"));
    assert!(run("vae-decode", vec![("latents", f(vec![1, 4, 8, 8], f32::NAN))]).contains("NaN"));

    // A pairs file whose context width is not the model's cross-attention width.
    let pairs = dir.join("pairs.safetensors");
    rewrite_tensor(&pairs, "encoder_hidden_states", |d| {
        let s = d.shape().to_vec();
        f(vec![s[0], s[1], s[2] + 3], 0.0)
    });
    let out = train(&config, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("do not fit the model") && stderr(&out).contains("encoder_hidden_states"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Defect 4: Leftovers of killed writes are removed at the next start; a symlink inside the output
/// folder is refused, not followed; `--out /` leaves nothing behind; a cache index naming a
/// shard outside the cache is refused.
#[test]
fn leftovers_links_and_escapes() {
    let (dir, config) = setup("leftovers");
    let run = dir.join("run");
    assert!(train(&config, &[]).status.success());
    // A dead writer's temporary, an unfinished checkpoint, a checkpoint caught half-deleted.
    std::fs::write(run.join("metrics.jsonl.tmp-4194999"), b"x").unwrap();
    std::fs::create_dir_all(run.join(".tmp-checkpoint-00000003/unet")).unwrap();
    std::fs::create_dir_all(run.join(".del-checkpoint-00000001")).unwrap();
    std::fs::create_dir_all(run.join("checkpoint-00000000/unet")).unwrap();
    let out = train(&config, &["--resume", "latest", "--set", "steps=3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for gone in
        ["metrics.jsonl.tmp-4194999", ".tmp-checkpoint-00000003", ".del-checkpoint-00000001", "checkpoint-00000000"]
    {
        assert!(!run.join(gone).exists(), "{gone} was left behind");
    }

    // A symlinked unet/ would have its target overwritten by the final save.
    let target = dir.join("precious");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("keep.txt"), b"mine").unwrap();
    let unet = run.join("unet");
    std::fs::remove_dir_all(&unet).unwrap();
    std::os::unix::fs::symlink(&target, &unet).unwrap();
    let out = train(&config, &["--resume", "latest", "--set", "steps=4"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert_eq!(read(&target.join("keep.txt")), b"mine");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 1);

    // `--out` naming a folder: a clear error, no temporary left in it.
    let outdir = dir.join("outdir");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = mapo(&[
        "forward",
        "loss",
        "--method",
        "sft",
        "--inputs",
        fixtures().join("losses.safetensors").to_str().unwrap(),
        "--out",
        outdir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_dir(&outdir).unwrap().count(), 0, "a temporary was left in the folder");

    // A cache whose index names a shard outside it.
    let cache = dir.join("cache");
    let parquet = fixtures().join("parquet/pairs.parquet");
    let made = cache_tiny(&parquet, &cache, &["--max-samples", "2"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let text = String::from_utf8(read(&cache.join("index.json"))).unwrap();
    let mut index: serde_json::Value = serde_json::from_str(&text).unwrap();
    index["shards"][0]["file"] = serde_json::json!("../../outside.safetensors");
    std::fs::write(cache.join("index.json"), index.to_string()).unwrap();
    let err = match mapo::data::cache::CacheIndex::read(&cache) {
        Ok(_) => panic!("an escaping shard name was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("not a file name inside the cache"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A run killed with SIGKILL at a random moment (here: once its second checkpoint exists,
/// possibly mid-write of the next) resumes to exactly the uninterrupted run's weights and
/// metrics; the dead process's lock and temporaries are no obstacle.
#[test]
fn kill_9_then_resume_equals_an_uninterrupted_run() {
    let (dir, config) = setup("kill");
    let steps = ["--set", "steps=12"];
    let full = train(&config, &[&steps[..], &["--set", &format!("output_dir={:?}", dir.join("full"))]].concat());
    assert!(full.status.success(), "{}", stderr(&full));
    let run = dir.join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["train", "--config", config.to_str().unwrap(), "--set", "steps=12"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !run.join("checkpoint-2/state.json").exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(run.join(".mapo.lock").exists(), "a killed run leaves its lock");
    let out = train(&config, &[&steps[..], &["--resume", "latest"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(metric_lines(&run), metric_lines(&dir.join("full")));
    let weights = |d: &Path| read(&d.join("unet/diffusion_pytorch_model.safetensors"));
    assert!(weights(&run) == weights(&dir.join("full")), "final weights differ");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Defect 3: a cache whose shards disagree in shape (one replaced by another model's) is an
/// error naming the shard, found from the headers before anything is loaded.
#[test]
fn cache_shards_of_other_shapes_are_refused() {
    use burn::tensor::TensorData;
    let dir = std::env::temp_dir().join(format!("mapo-rel-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("cache");
    let parquet = fixtures().join("parquet/pairs.parquet");
    let made = cache_tiny(&parquet, &cache, &["--max-samples", "2", "--shard-size", "1"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let shard = cache.join("shard-00001.safetensors");
    rewrite_tensor(&shard, "encoder_hidden_states", |d| {
        let s = d.shape().to_vec();
        TensorData::new(vec![0f32; s[0] * s[1] * (s[2] + 1)], [s[0], s[1], s[2] + 1])
    });
    let err = match mapo::data::stream::PairSource::open(&cache, 0, 8, false) {
        Ok(_) => panic!("mismatched shards were accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("shard-00001.safetensors: pairs of shape"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Defect 4: a parquet file with no rows (or none usable) is an error, not "0 pairs cached".
#[test]
fn an_empty_parquet_is_an_error() {
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;
    let dir = std::env::temp_dir().join(format!("mapo-rel-empty-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let schema = parse_message_type(
        "message pairs { required binary caption (UTF8); required binary jpg_0; required binary jpg_1; \
         required double label_0; required double label_1; }",
    )
    .unwrap();
    let file = dir.join("empty.parquet");
    let writer = SerializedFileWriter::new(
        std::fs::File::create(&file).unwrap(),
        std::sync::Arc::new(schema),
        std::sync::Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    writer.close().unwrap();
    let out = cache_tiny(&file, &dir.join("cache"), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no usable pair"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest)
        } else {
            std::fs::copy(e.path(), dest).map(|_| ()).unwrap()
        }
    }
}

/// A run killed before its first checkpoint is no dead end: `--resume latest` and a fresh
/// start both discard its files (nothing of it can mix in) and train from step 0.
#[test]
fn a_run_killed_before_its_first_checkpoint_starts_afresh() {
    let (dir, config) = setup("partial");
    let run = dir.join("run");
    for extra in [&["--resume", "latest"][..], &[]] {
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("config.toml"), "# a killed run's\n").unwrap();
        std::fs::write(run.join("metrics.jsonl"), "{\"step\": 1, \"loss\": 99.0}\n").unwrap();
        let out = train(&config, extra);
        assert!(out.status.success(), "{extra:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("before its first checkpoint"), "{}", stderr(&out));
        let metrics = String::from_utf8(read(&run.join("metrics.jsonl"))).unwrap();
        assert_eq!(metrics.lines().count(), 2, "{metrics}");
        assert!(!metrics.contains("99.0"), "{metrics}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
