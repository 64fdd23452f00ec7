//! Training at scale on CPUs: the streamed cache reader (memory independent of the dataset
//! size, a seeded order that resumes exactly, shards checked against their index), data
//! parallel ranks (N ranks × b pairs = 1 rank × N·b pairs) and the cached reference.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixtures, metric_lines, rel_err};
use mapo::data::stream::PairSource;
use mapo::models::io::SafeTensorFiles;

fn mapo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mapo")).args(args).env("MAPO_QUIET_DEVICE", "1").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mapo-scale-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn model() -> PathBuf {
    fixtures().join("tiny-sdxl")
}

/// A synthetic cache of `pairs` pairs in shards of `shard` pairs.
fn make_cache(out: &Path, pairs: usize, shard: usize) {
    let made = mapo(&[
        "make-pairs",
        "--model",
        model().to_str().unwrap(),
        "--pairs",
        &pairs.to_string(),
        "--cache",
        "--shard-size",
        &shard.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{}", stderr(&made));
}

/// Writes a config (full fine-tuning, AdamW lr 1e-3, flex) with `extra` TOML lines.
fn config(dir: &Path, name: &str, data: &Path, method: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "model = {:?}\ndata = {data:?}\noutput_dir = {:?}\nmethod = {method:?}\ndevice = \"flex\"\n{extra}\n\
             [optimizer]\nlr = 1e-3\n",
            model(),
            dir.join(name)
        ),
    )
    .unwrap();
    path
}

fn train(config: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--config", config.to_str().unwrap()];
    args.extend(extra);
    mapo(&args)
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    metric_lines(run)
}

/// Every UNet tensor of a finished run, by name.
fn weights(run: &Path) -> Vec<(String, Vec<f32>)> {
    let f = SafeTensorFiles::open_file(&run.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let mut names: Vec<String> = f.names().map(String::from).collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let data = f.get(&n).unwrap().to_data().unwrap().convert::<f32>();
            (n, data.try_to_vec::<f32>().unwrap())
        })
        .collect()
}

/// The largest relative difference over the UNet's tensors (max |a−b| / max |b| per tensor).
fn max_rel_diff(a: &Path, b: &Path) -> f32 {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    wa.iter()
        .zip(&wb)
        .map(|((n, x), (m, y))| {
            assert_eq!(n, m);
            rel_err(x, y)
        })
        .fold(0f32, f32::max)
}

/// The reader's order: every pair exactly once per epoch, another order in the next epoch,
/// and the streamed rows are the rows that `position` names.
#[test]
fn the_stream_visits_every_pair_once_per_epoch_in_a_seeded_order() {
    let dir = temp("order");
    let cache = dir.join("cache");
    make_cache(&cache, 22, 4); // shards of 4, 4, 4, 4, 4, 2 pairs
    let source = PairSource::open(&cache, 7, 2, false).unwrap();
    assert_eq!(source.len, 22);
    let mut epochs = vec![];
    for e in 0..2 {
        let mut seen: Vec<(String, usize)> = (e * 22..(e + 1) * 22)
            .map(|c| {
                let p = source.position(c);
                assert_eq!(p.epoch, e);
                (p.shard, p.row)
            })
            .collect();
        epochs.push(seen.clone());
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 22, "epoch {e} repeats a pair");
    }
    assert_ne!(epochs[0], epochs[1], "both epochs in one order");
    // Streamed from cursor 17 (mid-group, crossing the epoch boundary at 22).
    let (rows, cursors) = source.stream(17, 1).next(10).unwrap();
    assert_eq!(cursors, (17..27).collect::<Vec<_>>());
    let device = mapo::device::select(Some("flex")).unwrap().device;
    let l = rows.shape.latent_len();
    for (i, c) in cursors.iter().enumerate() {
        let p = source.position(*c);
        let f = SafeTensorFiles::open_file(&cache.join(&p.shard)).unwrap();
        let mean = common::to_vec(f.float::<4>("chosen_mean", &device, burn::tensor::DType::F32).unwrap());
        let want: Vec<f32> = mean[p.row * l..(p.row + 1) * l].iter().map(|v| v * 0.13025f32).collect();
        assert_eq!(&rows.chosen[i * l..(i + 1) * l], &want[..], "cursor {c} ({p:?})");
    }
    // Another seed, another order.
    let other = PairSource::open(&cache, 8, 2, false).unwrap();
    assert_ne!(
        (0..22).map(|c| other.position(c).row).collect::<Vec<_>>(),
        (0..22).map(|c| source.position(c).row).collect::<Vec<_>>()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Memory is bounded by the shuffle buffer, not the dataset: a run on a cache 8× larger has
/// the same peak RSS. (Loading the whole cache would add ~70 MB for the larger one.)
#[test]
fn peak_memory_does_not_depend_on_the_cache_size() {
    let dir = temp("rss");
    let peak = |pairs: usize| -> u64 {
        let cache = dir.join(format!("cache-{pairs}"));
        make_cache(&cache, pairs, 32);
        let cfg =
            config(&dir, &format!("run-{pairs}"), &cache, "mapo", "steps = 4\nbatch_size = 2\nshuffle_shards = 2");
        let out = train(&cfg, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = std::fs::read_to_string(dir.join(format!("run-{pairs}/metrics.jsonl"))).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        last["peak_rss_bytes"].as_u64().expect("peak RSS (Linux)")
    };
    let (small, large) = (peak(512), peak(4096));
    eprintln!("peak RSS: 512 pairs {small} B, 4096 pairs {large} B");
    let diff = (large as i64 - small as i64).unsigned_abs();
    assert!(diff < 8 << 20, "peak RSS {small} B (512 pairs) vs {large} B (4096 pairs): differ by {diff} B");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Resuming mid-group, then crossing two epoch boundaries, draws exactly the batches of an
/// uninterrupted run: same metrics, bit-identical weights; the checkpoint names its position.
#[test]
fn resume_across_epoch_boundaries_is_exact() {
    let dir = temp("resume");
    let cache = dir.join("cache");
    make_cache(&cache, 12, 4);
    let extra = "batch_size = 2\nshuffle_shards = 2\ncheckpoint_every = 5";
    let full = config(&dir, "full", &cache, "mapo", &format!("steps = 13\n{extra}"));
    let out = train(&full, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let part = config(&dir, "part", &cache, "mapo", &format!("steps = 5\n{extra}"));
    let out = train(&part, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("part/checkpoint-5/state.json")).unwrap()).unwrap();
    assert_eq!(state["data_cursor"], 10);
    assert_eq!(state["data_position"]["epoch"], 0);
    assert!(state["data_position"]["shard"].as_str().unwrap().starts_with("shard-"), "{state}");
    let out = train(&part, &["--set", "steps=13", "--resume", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(metrics(&dir.join("part")), metrics(&dir.join("full")));
    assert_eq!(max_rel_diff(&dir.join("part"), &dir.join("full")), 0.0, "weights differ after resume");
    let last = metrics(&dir.join("full")).pop().unwrap();
    assert!(last["epoch"].as_f64().unwrap() > 2.0, "{last}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 2 ranks × 2 pairs end with the UNet of 1 rank × 4 pairs (MaPO full fine-tuning, and DPO
/// with LoRA, whose reference is the policy with its adapters off on every rank), and the
/// log names the reduction. 1 rank × 2 pairs ends elsewhere (the check can fail).
/// Plain SGD: AdamW divides by √v, which turns the float-order noise of a near-zero gradient
/// into a full-size step (measured: 1.6e-4 relative with AdamW, 9e-8 with SGD).
#[test]
fn two_ranks_equal_one_rank_with_the_whole_batch() {
    let dir = temp("ranks");
    let pairs = dir.join("pairs.safetensors");
    let made =
        mapo(&["make-pairs", "--model", model().to_str().unwrap(), "--pairs", "8", "--out", pairs.to_str().unwrap()]);
    assert!(made.status.success(), "{}", stderr(&made));
    for (method, extra) in [("mapo", ""), ("dpo", "[lora]\nrank = 4\n")] {
        let run = |name: &str, lines: &str| -> PathBuf {
            let cfg =
                config(&dir, &format!("{method}-{name}"), &pairs, method, &format!("steps = 3\n{lines}\n{extra}"));
            let out = train(&cfg, &["--set", "optimizer.name=\"sgd\"", "--set", "optimizer.lr=0.05"]);
            assert!(out.status.success(), "{}", stderr(&out));
            if lines.contains("devices") {
                assert!(stderr(&out).contains("reduction: ranks as threads"), "{}", stderr(&out));
            }
            dir.join(format!("{method}-{name}"))
        };
        // `device` stays set in the file: it must agree with devices[0].
        let two = run("two", "batch_size = 2\ndevices = [\"flex\", \"flex\"]");
        let one = run("one", "batch_size = 4");
        let half = run("half", "batch_size = 2");
        let same = max_rel_diff(&two, &one);
        let other = max_rel_diff(&half, &one);
        eprintln!("{method}: 2×2 vs 1×4 {same:.3e}; 1×2 vs 1×4 {other:.3e}");
        assert!(same <= 1e-5, "{method}: 2 ranks × 2 pairs differ from 1 rank × 4 pairs by {same:.3e}");
        assert!(other > 1e-4, "{method}: half the batch gave the same weights ({other:.3e}): the test cannot fail");
        let (m2, m1) = (metrics(&two), metrics(&one));
        for (a, b) in m2.iter().zip(&m1) {
            let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * y.abs().max(1.0), "{method}: loss {x} vs {y}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `reference_cache`: DPO trains to the same weights with the reference's errors computed
/// up front, and says that it freed the reference.
#[test]
fn a_cached_reference_trains_like_the_live_one() {
    let dir = temp("refcache");
    let pairs = dir.join("pairs.safetensors");
    let made =
        mapo(&["make-pairs", "--model", model().to_str().unwrap(), "--pairs", "6", "--out", pairs.to_str().unwrap()]);
    assert!(made.status.success(), "{}", stderr(&made));
    let live = config(&dir, "live", &pairs, "dpo", "steps = 4\nbatch_size = 2\ngrad_accumulation = 2");
    let cached = config(
        &dir,
        "cached",
        &pairs,
        "dpo",
        "steps = 4\nbatch_size = 2\ngrad_accumulation = 2\nreference_cache = true",
    );
    let out = train(&live, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = train(&cached, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("reference model freed"), "{}", stderr(&out));
    let diff = max_rel_diff(&dir.join("cached"), &dir.join("live"));
    eprintln!("cached vs live reference: {diff:.3e}");
    assert!(diff <= 1e-5, "the cached reference changed the weights by {diff:.3e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bad input: shards that disagree with the index, a cache of another resolution or another
/// model's VAE, devices that do not exist, and a resume with another number of ranks.
#[test]
fn bad_caches_and_devices_are_clear_errors() {
    let dir = temp("bad");
    let cache = dir.join("cache");
    make_cache(&cache, 8, 4);
    let index_path = cache.join("index.json");
    let original = std::fs::read_to_string(&index_path).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
        f(&mut v);
        std::fs::write(&index_path, v.to_string()).unwrap();
    };
    let open_err = || format!("{:#}", PairSource::open(&cache, 0, 8, false).expect_err("accepted a bad cache"));

    edit(&|v| v["shards"][1]["pairs"] = serde_json::json!(5));
    let err = open_err();
    assert!(err.contains("shard-00001.safetensors: holds 4 pairs, the cache's index.json says 5"), "{err}");

    edit(&|v| v["meta"]["resolution"] = serde_json::json!(128));
    let err = open_err();
    assert!(err.contains("holds 8x8 latents, but index.json says resolution 128"), "{err}");

    edit(&|v| v["meta"]["vae_config"]["scaling_factor"] = serde_json::json!(0.18215));
    let cfg = config(&dir, "vae", &cache, "mapo", "steps = 1\nbatch_size = 2");
    let out = train(&cfg, &[]);
    assert!(
        !out.status.success() && stderr(&out).contains("made with another VAE (scaling_factor"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&index_path, &original).unwrap();

    for (devices, want) in [
        ("[\"flex\", \"flex:1\"]", "devices[1] = \"flex:1\": device flex:1: the flex backend has one device"),
        ("[\"flex\", \"cuda:3\"]", "devices[1] = \"cuda:3\""),
        ("[\"flex\", \"tpu\"]", "unknown device \"tpu\""),
    ] {
        let cfg = config(&dir, "devices", &cache, "mapo", &format!("steps = 1\nbatch_size = 2\ndevices = {devices}"));
        let out = train(&cfg, &[]);
        assert!(!out.status.success() && stderr(&out).contains(want), "{devices}: {}", stderr(&out));
    }

    // A checkpoint of 2 ranks does not resume with 1 (the global batch would change).
    let cfg = config(&dir, "ranks", &cache, "mapo", "steps = 1\nbatch_size = 1\ndevices = [\"flex\", \"flex\"]");
    let out = train(&cfg, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = train(&cfg, &["--set", "devices=[\"flex\"]", "--set", "steps=2", "--resume", "latest"]);
    assert!(!out.status.success() && stderr(&out).contains("written by a run of 2 rank(s)"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}
