//! `mapo bench score`: a reward model's towers at the real size with random weights:
//! initialisation time, preprocessing and scoring time per image, peak memory.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::json;

use crate::device::select;
use crate::eval::preprocess::ClipImageProcessor;
use crate::eval::resize::Rgb8;
use crate::models::clip::model::{ClipModel, cosine};
use crate::models::clip::open_clip::{OpenClipConfig, VIT_H_14};
use crate::sample::noise::gaussian;
use crate::util::peak_rss;

/// OpenAI's ViT-L/14 (the aesthetic predictor's CLIP, CLIP score's).
const VIT_L_14: &str = r#"{"embed_dim": 768, "quick_gelu": true,
  "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12}}"#;

#[derive(clap::Args, Debug)]
pub struct ScoreBench {
    /// vit-h-14 (PickScore, HPS) or vit-l-14 (CLIP score, aesthetic).
    #[arg(long, default_value = "vit-h-14")]
    pub model: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Timed batches (after one warm-up).
    #[arg(long, default_value_t = 2)]
    pub batches: usize,
    /// Also write the random model as a transformers CLIPModel folder (f32 safetensors,
    /// in the system temp folder) and time loading it back, as a real checkpoint loads.
    #[arg(long)]
    pub load: bool,
    #[arg(long, env = "MAPO_DEVICE")]
    pub device: Option<String>,
}

/// Writes `model` as a CLIPModel folder and times `ClipModel::from_dir` on it; returns
/// (seconds, bytes on disk).
fn time_loading(
    model: &ClipModel,
    hf: &crate::models::clip::model::ClipModelConfig,
    device: &burn::tensor::Device,
) -> Result<(f64, u64)> {
    use crate::models::io::{PendingTensor, write_safetensors};
    let dir = std::env::temp_dir().join(format!("mapo-bench-clip-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut tensors = Vec::new();
    crate::models::named::for_each_param(model, |name, tensor, shape| {
        // transformers' names: the text projection at the root, the patch embedding a conv.
        let name = match name.strip_prefix("text_model.") {
            Some(n) if n.starts_with("text_projection") => n.to_string(),
            _ if name.ends_with("embeddings.patch_embedding") => format!("{name}.weight"),
            _ => name,
        };
        tensors.push(PendingTensor {
            name,
            shape,
            dtype: burn::tensor::DType::F32,
            data: Box::new(move || tensor.into_data()),
        });
    });
    tensors.push(PendingTensor {
        name: "logit_scale".into(),
        shape: vec![],
        dtype: burn::tensor::DType::F32,
        data: Box::new(|| TensorData::new(vec![100f32.ln()], Vec::<usize>::new())),
    });
    let file = dir.join("model.safetensors");
    write_safetensors(&file, tensors)?;
    std::fs::write(dir.join("config.json"), serde_json::to_string(hf)?)?;
    let bytes = std::fs::metadata(&file)?.len();
    let t = Instant::now();
    let (loaded, _) = ClipModel::from_dir(&dir, device, burn::tensor::DType::F32)?;
    let load_s = t.elapsed().as_secs_f64();
    drop(loaded);
    std::fs::remove_dir_all(&dir)?;
    Ok((load_s, bytes))
}

pub fn run(b: &ScoreBench) -> Result<serde_json::Value> {
    let text = match b.model.as_str() {
        "vit-h-14" => VIT_H_14,
        "vit-l-14" => VIT_L_14,
        other => bail!("--model {other:?}: expected vit-h-14 or vit-l-14"),
    };
    let config: OpenClipConfig = serde_json::from_str(text)?;
    let hf = config.to_transformers()?;
    let selected = select(b.device.as_deref())?;
    let device = selected.device.clone();
    let t0 = Instant::now();
    let model = ClipModel::random(&hf, &device)?;
    let init_s = t0.elapsed().as_secs_f64();
    let loading = if b.load { Some(time_loading(&model, &hf, &device)?) } else { None };
    let processor = ClipImageProcessor::open_clip(hf.vision_config.image_size);
    // 512×384 photos-sized inputs, so the resize is part of the cost.
    let image = |seed: u64| Rgb8 {
        width: 512,
        height: 384,
        data: gaussian(seed, 512 * 384 * 3).iter().map(|v| (128.0 + 40.0 * v).clamp(0.0, 255.0) as u8).collect(),
    };
    let mut pre_s = 0.0;
    let mut times = Vec::new();
    for round in 0..=b.batches {
        let t = Instant::now();
        let mut pixels = Vec::new();
        for i in 0..b.batch {
            pixels.extend(processor.pixels(&image((round * b.batch + i) as u64))?.0);
        }
        let s = hf.vision_config.image_size;
        let x = Tensor::<4>::from_data(TensorData::new(pixels, [b.batch, 3, s, s]), &device);
        let pre = t.elapsed().as_secs_f64();
        let ids: Vec<i64> =
            (0..b.batch).flat_map(|_| [vec![49406, 320, 1929, 49407], vec![49407; 73]].concat()).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b.batch, 77]), &device);
        let cos = cosine(model.image_embeds(x), model.text_embeds(ids));
        let _ = cos.into_data();
        if round > 0 {
            pre_s += pre;
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    Ok(json!({
        "bench": "score", "framework": "mapo", "model": b.model, "device": selected.backend.name(), "batch": b.batch,
        "init_random_s": init_s, "load_s": loading.map(|l| l.0), "checkpoint_bytes": loading.map(|l| l.1),
        "batch_median_s": median, "per_image_s": median / b.batch as f64,
        "preprocess_per_image_s": pre_s / (b.batches * b.batch) as f64,
        "peak_device_bytes": device.memory_pool_usage().map(|u| u.bytes_reserved), "peak_rss_bytes": peak_rss(),
    }))
}
