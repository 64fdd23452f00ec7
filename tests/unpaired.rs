//! Unpaired data (one image and a binary label per row, as Diffusion-KTO trains on): the
//! parquet reader on the committed fixture (tools/golden/make_parquet.py --unpaired: 12
//! rows, label 1 on even rows, label 2 at row 3, a broken image at row 7, a null label at
//! row 9), the cache it makes, KTO training on it, and the refusal of pair methods.

mod common;

use std::path::PathBuf;

use mapo::data::parquet::{Pair, PairReader, ReadOptions, Skipped};
use mapo::models::io::SafeTensorFiles;

fn fixture(name: &str) -> PathBuf {
    common::fixtures().join("parquet").join(name)
}

fn unpaired() -> ReadOptions {
    ReadOptions { unpaired: true, ..Default::default() }
}

/// Blue channel of the fixture's images: 40 for label 0, 240 for label 1.
fn drawn_label(bytes: &[u8]) -> bool {
    image::load_from_memory(bytes).unwrap().to_rgb8().get_pixel(0, 0)[2] > 140
}

#[test]
fn reader_reads_images_with_labels_and_counts_bad_rows() {
    let reader = PairReader::open(&fixture("unpaired.parquet"), unpaired()).unwrap();
    let mut rows: Vec<Pair> = Vec::new();
    let skipped = reader
        .for_each(|p| {
            rows.push(p);
            Ok(true)
        })
        .unwrap();
    // Row 7's blob is only found when decoded (the loader counts it).
    assert_eq!(skipped, Skipped { ties: 0, not_a_preference: 1, missing_value: 1, bad_image: 0 });
    let at: Vec<usize> = rows.iter().map(|p| p.row).collect();
    assert_eq!(at, [0, 1, 2, 4, 5, 6, 7, 8, 10, 11]);
    for p in rows.iter().filter(|p| p.row != 7) {
        assert_eq!(p.label, Some(p.row % 2 == 0), "row {}", p.row);
        assert_eq!(drawn_label(&p.chosen), p.row % 2 == 0, "row {}: the image is the row's own", p.row);
        assert!(p.rejected.is_empty());
        assert_eq!(p.caption, format!("image {}: a gradient with a square", p.row));
    }
}

#[test]
fn pair_and_unpaired_readers_name_the_missing_column() {
    let err = PairReader::open(&fixture("unpaired.parquet"), ReadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("unpaired.parquet") && err.contains("no column \"jpg_0\""), "{err}");
    let err = PairReader::open(&fixture("pairs.parquet"), unpaired()).err().unwrap().to_string();
    assert!(err.contains("pairs.parquet") && err.contains("no column \"image\""), "{err}");
}

fn train(dir: &std::path::Path, data: &std::path::Path, method: &str) -> std::process::Output {
    let model = common::fixtures().join("tiny-sdxl");
    let out = dir.join(format!("run-{method}"));
    let config = dir.join(format!("{method}.toml"));
    std::fs::write(
        &config,
        format!(
            "model = {model:?}\ndata = {data:?}\noutput_dir = {out:?}\nmethod = \"{method}\"\nsteps = 2\nbatch_size = 9\n\
             device = \"{}\"\n[optimizer]\nlr = 1e-4\n",
            common::device_name()
        ),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_mapo"))
        .args(["train", "--config", config.to_str().unwrap()])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

#[test]
fn kto_trains_on_an_unpaired_cache_and_pair_methods_refuse_it() {
    let dir = std::env::temp_dir().join(format!("mapo-unpaired-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("cache");
    let run = common::cache_tiny(&fixture("unpaired.parquet"), &cache, &["--unpaired", "--shard-size", "4"]);
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("cached 9 images in 3 shards"), "{stderr}");
    assert!(stderr.contains("1 not a preference, 1 missing values, 1 bad images"), "{stderr}");
    assert!(stderr.contains("row 3") && stderr.contains("row 7") && stderr.contains("row 9"), "{stderr}");

    // Shards hold one latent per row and its label, which is the row's own.
    let shard = SafeTensorFiles::open_file(&cache.join("shard-00000.safetensors")).unwrap();
    let names: Vec<&str> = shard.names().collect();
    assert!(names.contains(&"image_mean") && names.contains(&"image_logvar"), "{names:?}");
    assert!(!names.contains(&"chosen_mean") && !names.contains(&"rejected_mean"), "{names:?}");
    assert_eq!(shard.shape("image_mean"), Some(&[4, 4, 8, 8][..]), "4 rows of 4×8×8 latents (32² through a 4× VAE)");
    let rows = shard.get("row").unwrap().to_data_any().unwrap().try_to_vec::<i64>().unwrap();
    let labels = shard.get("label").unwrap().to_data_any().unwrap().try_to_vec::<i64>().unwrap();
    assert_eq!(labels, rows.iter().map(|r| (r % 2 == 0) as i64).collect::<Vec<_>>(), "rows {rows:?}");

    let run = train(&dir, &cache, "kto");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let lines = common::metric_lines(&dir.join("run-kto"));
    assert_eq!(lines.len(), 2);
    for line in &lines {
        for k in ["loss", "kl_estimate", "chosen_loss", "rejected_loss", "ref_chosen_loss", "ref_rejected_loss"] {
            assert!(line[k].as_f64().is_some_and(f64::is_finite), "{k} in {line}");
        }
        // The whole set is one batch: 6 desirable and 3 undesirable images.
        let acc = line["implicit_acc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{line}");
    }
    // Step 1: the policy is the reference (up to the training attention's rounding).
    for (policy, reference) in [("chosen_loss", "ref_chosen_loss"), ("rejected_loss", "ref_rejected_loss")] {
        let (p, r) = (lines[0][policy].as_f64().unwrap(), lines[0][reference].as_f64().unwrap());
        assert!((p - r).abs() <= 1e-6 * r.abs(), "{policy} {p} vs {reference} {r}");
    }

    for method in ["mapo", "dpo"] {
        let run = train(&dir, &cache, method);
        let stderr = String::from_utf8_lossy(&run.stderr).to_string();
        assert!(!run.status.success(), "{method} trained on unpaired data");
        assert!(
            stderr.contains(&format!("method {method} needs preference pairs")) && stderr.contains("(kto)"),
            "{stderr}"
        );
        assert!(!dir.join(format!("run-{method}")).join("metrics.jsonl").exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
