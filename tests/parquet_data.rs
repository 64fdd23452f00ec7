//! Preference data from parquet: the reader on the committed fixture (made by
//! tools/golden/make_parquet.py: 30 rows, ties at 5/11/17, a broken image at 23, labels
//! 0/0 at 26), transforms, the background loader, and the latent cache.

mod common;

use std::path::PathBuf;

use image::imageops::FilterType;
use mapo::data::loader::{LoaderConfig, for_each_prepared};
use mapo::data::parquet::{Pair, PairReader, ReadOptions, Skipped};
use mapo::data::transform::{Prepared, TransformConfig, prepare};

fn fixture() -> PathBuf {
    common::fixtures().join("parquet").join("pairs.parquet")
}

fn read_all(options: ReadOptions) -> (Vec<Pair>, Skipped) {
    let reader = PairReader::open(&fixture(), options).unwrap();
    let mut pairs = Vec::new();
    let skipped = reader
        .for_each(|p| {
            pairs.push(p);
            Ok(true)
        })
        .unwrap();
    (pairs, skipped)
}

/// Blue channel of the fixture's images encodes the side: 40 for jpg_0, 240 for jpg_1.
fn side(bytes: &[u8]) -> u8 {
    let img = image::load_from_memory(bytes).unwrap().to_rgb8();
    if img.get_pixel(0, 0)[2] > 140 { 1 } else { 0 }
}

#[test]
fn reader_counts_drops_ties_and_orders_chosen_first() {
    let (pairs, skipped) = read_all(ReadOptions::default());
    assert_eq!(skipped, Skipped { ties: 3, not_a_preference: 1, missing_value: 0, bad_image: 0 });
    assert_eq!(pairs.len(), 26);
    let rows: Vec<usize> = pairs.iter().map(|p| p.row).collect();
    assert!(!rows.contains(&5) && !rows.contains(&26) && rows.contains(&23), "{rows:?}");
    for p in &pairs {
        // label_1 = 1 on rows divisible by 4: the chosen image is jpg_1 there.
        let want = if p.row % 4 == 0 { 1 } else { 0 };
        assert_eq!(side(&p.chosen), want, "row {}", p.row);
        if p.row != 23 {
            assert_eq!(side(&p.rejected), 1 - want, "row {}", p.row);
        }
        assert_eq!(p.caption, format!("pair {}: a gradient with a square", p.row));
    }
    let (with_ties, skipped) = read_all(ReadOptions { keep_ties: true, ..Default::default() });
    assert_eq!((with_ties.len(), skipped.ties), (29, 0));
    let (few, _) = read_all(ReadOptions { max_samples: Some(7), ..Default::default() });
    assert_eq!(few.len(), 7);
}

#[test]
fn shuffled_order_is_deterministic_and_a_permutation() {
    let rows = |seed: Option<u64>| -> Vec<usize> {
        read_all(ReadOptions { shuffle_seed: seed, shuffle_buffer: 8, ..Default::default() })
            .0
            .iter()
            .map(|p| p.row)
            .collect()
    };
    let (a, b, c, plain) = (rows(Some(7)), rows(Some(7)), rows(Some(8)), rows(None));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, plain);
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, plain);
}

#[test]
fn missing_column_names_file_and_column() {
    let options = ReadOptions {
        columns: mapo::data::parquet::Columns { caption: "prompt".into(), ..Default::default() },
        ..Default::default()
    };
    let err = PairReader::open(&fixture(), options).err().unwrap().to_string();
    assert!(err.contains("pairs.parquet") && err.contains("\"prompt\"") && err.contains("caption"), "{err}");
}

fn resized_crop(bytes: &[u8], r: u32, top: u32, left: u32, flip: bool) -> Vec<f32> {
    let img = image::load_from_memory(bytes).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let s = r as f64 / w.min(h) as f64;
    let (nw, nh) = ((w as f64 * s).round() as u32, (h as f64 * s).round() as u32);
    let img = image::DynamicImage::ImageRgb8(img).resize_exact(nw, nh, FilterType::Triangle).to_rgb8();
    let mut out = vec![0.0; (3 * r * r) as usize];
    for y in 0..r {
        for x in 0..r {
            let sx = if flip { left + r - 1 - x } else { left + x };
            let p = img.get_pixel(sx, top + y);
            for c in 0..3 {
                out[((c as u32 * r + y) * r + x) as usize] = p[c] as f32 / 127.5 - 1.0;
            }
        }
    }
    out
}

#[test]
fn random_crop_offsets_reach_time_ids_and_flips_are_shared_within_a_pair() {
    let (pairs, _) = read_all(ReadOptions::default());
    let config = TransformConfig { resolution: 16, random_crop: true, flip: 0.5, caption_dropout: 0.0 };
    let (mut lefts, mut flips) = (Vec::new(), Vec::new());
    for (i, pair) in pairs.iter().enumerate().filter(|(_, p)| p.row != 23) {
        let p: Prepared = prepare(pair, &config, 3, i as u64).unwrap();
        let [oh, ow, top, left, r, r2] = p.time_ids;
        let orig = image::load_from_memory(&pair.chosen).unwrap().to_rgb8().dimensions();
        assert_eq!((ow as u32, oh as u32), orig, "original size, row {}", pair.row);
        assert_eq!((r, r2), (16.0, 16.0));
        // The pixels are the crop at the recorded offsets (and flipped when it says so).
        assert_eq!(p.chosen, resized_crop(&pair.chosen, 16, top as u32, left as u32, p.flipped), "row {}", pair.row);
        assert_eq!(
            p.rejected,
            resized_crop(&pair.rejected, 16, top as u32, left as u32, p.flipped),
            "row {}",
            pair.row
        );
        lefts.push(left.max(top) as u32);
        flips.push(p.flipped);
        // Same (seed, index): same choices.
        assert_eq!(prepare(pair, &config, 3, i as u64).unwrap().time_ids, p.time_ids);
    }
    assert!(lefts.iter().any(|&o| o > 0) && lefts.contains(&0), "offsets vary: {lefts:?}");
    assert!(flips.iter().any(|&f| f) && flips.iter().any(|&f| !f), "flips vary: {flips:?}");
}

#[test]
fn loader_counts_bad_rows_keeps_order_and_resumes() {
    let reader = PairReader::open(&fixture(), ReadOptions { shuffle_seed: Some(1), ..Default::default() }).unwrap();
    let config = LoaderConfig {
        transform: TransformConfig { resolution: 16, ..Default::default() },
        seed: 0,
        workers: 3,
        queue: 2,
        skip: 0,
    };
    let collect = |config: &LoaderConfig| {
        let mut got: Vec<(usize, usize, Vec<f32>)> = Vec::new();
        let skipped = for_each_prepared(&reader, config, |pos, p| {
            got.push((pos, p.row, p.chosen));
            Ok(true)
        })
        .unwrap();
        (got, skipped)
    };
    let (all, skipped) = collect(&config);
    assert_eq!(skipped, Skipped { ties: 3, not_a_preference: 1, missing_value: 0, bad_image: 1 });
    assert_eq!(all.len(), 25);
    let positions: Vec<usize> = all.iter().map(|g| g.0).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "in order: {positions:?}");
    assert!(!all.iter().any(|g| g.1 == 23));
    let (again, _) = collect(&config);
    assert_eq!(again, all, "same seed, same pairs in the same order");
    let (tail, _) = collect(&LoaderConfig { skip: 10, ..config.clone() });
    let want: Vec<_> = all.iter().filter(|g| g.0 >= 10).cloned().collect();
    assert_eq!(tail, want, "resuming at position 10");
}

fn mapo(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mapo")).args(args).output().unwrap()
}

fn cache_args<'a>(out: &'a str, data: &'a str, model: &'a str, resolution: &'a str) -> Vec<&'a str> {
    vec![
        "cache",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--resolution",
        resolution,
        "--shard-size",
        "8",
        "--batch",
        "3",
    ]
}

#[test]
fn cache_round_trip_resume_and_refusal() {
    let dir = std::env::temp_dir().join(format!("mapo-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("cache");
    let (out_s, data_s) = (out.to_str().unwrap().to_string(), fixture().to_str().unwrap().to_string());
    let model = common::fixtures().join("tiny-sdxl");
    let model_s = model.to_str().unwrap().to_string();
    let run = mapo(&cache_args(&out_s, &data_s, &model_s, "32"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("3 ties, 1 not a preference, 0 missing values, 1 bad images"), "{stderr}");
    assert!(stderr.contains("row 23") && stderr.contains("row 26"), "warnings name the rows:\n{stderr}");
    let index = mapo::data::cache::CacheIndex::read(&out).unwrap();
    assert_eq!((index.pairs(), index.shards.len(), index.complete), (25, 4, true));

    // Cached = fresh encode of the same prepared pair.
    let device = common::device();
    let shard = mapo::models::io::SafeTensorFiles::open_file(&out.join("shard-00000.safetensors")).unwrap();
    let rows = shard.get("row").unwrap().to_data_any().unwrap().try_to_vec::<i64>().unwrap();
    let (pairs, _) = read_all(ReadOptions::default());
    let pair = pairs.iter().find(|p| p.row as i64 == rows[1]).unwrap();
    let position = pairs.iter().position(|p| p.row as i64 == rows[1]).unwrap();
    let prepared =
        prepare(pair, &TransformConfig { resolution: 32, ..Default::default() }, 0, position as u64).unwrap();
    let vae =
        mapo::models::vae::AutoencoderKL::from_dir(&model.join("vae"), &device, burn::tensor::DType::F32).unwrap().0;
    let x = burn::tensor::Tensor::<4>::from_data(
        burn::tensor::TensorData::new(prepared.chosen.clone(), [1, 3, 32, 32]),
        &device,
    );
    let (mean, logvar) = vae.encode(x);
    let cached = |k: &str| shard.float::<4>(k, &device, burn::tensor::DType::F32).unwrap().narrow(0, 1, 1);
    common::assert_close("cached chosen mean", cached("chosen_mean"), mean, 1e-6);
    common::assert_close("cached chosen logvar", cached("chosen_logvar"), logvar, 1e-6);
    let pipe = mapo::sample::pipeline::PromptEncoder::load(&model, &device, burn::tensor::DType::F32).unwrap();
    let (context, pooled) = pipe.encode(&pair.caption);
    let ctx = shard.float::<3>("encoder_hidden_states", &device, burn::tensor::DType::F32).unwrap().narrow(0, 1, 1);
    common::assert_close("cached context", ctx, context, 1e-6);
    let te = shard.float::<2>("text_embeds", &device, burn::tensor::DType::F32).unwrap().narrow(0, 1, 1);
    common::assert_close("cached pooled", te, pooled, 1e-6);

    // Interrupted after two shards: the rerun writes the same last shards.
    let last = std::fs::read(out.join("shard-00003.safetensors")).unwrap();
    let mut cut = index.clone();
    cut.shards.truncate(2);
    cut.next_position = cut.shards[1].end_position;
    cut.complete = false;
    cut.skipped = Skipped::default();
    std::fs::write(out.join("index.json"), serde_json::to_string(&cut).unwrap()).unwrap();
    std::fs::remove_file(out.join("shard-00003.safetensors")).unwrap();
    let run = mapo(&cache_args(&out_s, &data_s, &model_s, "32"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success() && stderr.contains("resuming after 16 pairs"), "{stderr}");
    assert_eq!(std::fs::read(out.join("shard-00003.safetensors")).unwrap(), last);
    assert_eq!(mapo::data::cache::CacheIndex::read(&out).unwrap().pairs(), 25);

    // Another resolution into the same folder is refused.
    let run = mapo(&cache_args(&out_s, &data_s, &model_s, "16"));
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(!run.status.success() && stderr.contains("resolution"), "{stderr}");

    // Latents at the mean, or sampled from the cached distribution (same noise, timesteps).
    let open = |spread| mapo::data::stream::PairSource::open(&out, 5, 8, spread).unwrap();
    let mean = mapo::train::data::first_batch(&open(false), 4, &mapo::objective::Objective::sdxl(), &device).unwrap();
    let drawn = mapo::train::data::first_batch(&open(true), 4, &mapo::objective::Objective::sdxl(), &device).unwrap();
    assert_eq!(mean.timesteps, drawn.timesteps);
    assert_eq!(common::to_vec(mean.noise.clone()), common::to_vec(drawn.noise.clone()));
    // (drawn − mean) / (exp(logvar / 2) · scale) is standard normal.
    let index = mapo::data::cache::CacheIndex::read(&out).unwrap();
    let source = open(false);
    let logvar: Vec<Vec<f32>> = (0..4)
        .map(|c| {
            let at = source.position(c);
            let f = mapo::models::io::SafeTensorFiles::open_file(&out.join(&at.shard)).unwrap();
            let all = common::to_vec(f.float::<4>("chosen_logvar", &device, burn::tensor::DType::F32).unwrap());
            let per = all.len() / f.shape("chosen_logvar").unwrap()[0];
            all[at.row * per..(at.row + 1) * per].to_vec()
        })
        .collect();
    let (m, d) = (common::to_vec(mean.chosen.clone()), common::to_vec(drawn.chosen.clone()));
    let per = m.len() / 4;
    let z: Vec<f64> = (0..m.len())
        .map(|i| {
            let sd = (0.5 * logvar[i / per][i % per] as f64).exp() * index.meta.scaling_factor;
            (d[i] - m[i]) as f64 / sd
        })
        .collect();
    let mu = z.iter().sum::<f64>() / z.len() as f64;
    let var = z.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / z.len() as f64;
    assert!(mu.abs() < 0.15 && (var - 1.0).abs() < 0.25, "z over {} values: mean {mu}, variance {var}", z.len());
    let err = mapo::data::stream::PairSource::open(&fixture(), 0, 8, true).err().unwrap().to_string();
    assert!(err.contains("sample_latents needs a `mapo cache` folder"), "{err}");

    // The trainer reads the cache.
    let config = dir.join("train.toml");
    std::fs::write(
        &config,
        format!(
            "model = \"{model_s}\"\ndata = \"{out_s}\"\noutput_dir = \"{}\"\nmethod = \"mapo\"\nsteps = 1\nbatch_size = 2\n",
            dir.join("run").display()
        ),
    )
    .unwrap();
    let run = mapo(&["train", "--config", config.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    // ...and given parquet, caches it into the run folder first.
    let run_dir = dir.join("from-parquet");
    std::fs::write(
        &config,
        format!(
            "model = \"{model_s}\"\ndata = \"{data_s}\"\noutput_dir = \"{}\"\nmethod = \"sft\"\nsteps = 1\n\
             [data_transform]\nresolution = 32\n",
            run_dir.display()
        ),
    )
    .unwrap();
    let run = mapo(&["train", "--config", config.to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(mapo::data::cache::CacheIndex::read(&run_dir.join("cache")).unwrap().pairs(), 25);
}

#[test]
fn truncated_parquet_file_is_an_error_naming_it() {
    let dir = std::env::temp_dir().join(format!("mapo-truncated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(fixture()).unwrap();
    let cut = dir.join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = PairReader::open(&cut, ReadOptions::default()).err().unwrap();
    let text = format!("{err:#}");
    assert!(text.contains("cut.parquet") && text.contains("not a readable parquet file"), "{text}");
    let err = PairReader::open(&dir.join("nothing-*.parquet"), ReadOptions::default()).err().unwrap().to_string();
    assert!(err.contains("matches no parquet file"), "{err}");
}
