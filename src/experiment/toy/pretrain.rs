//! The pretraining of the built-in experiment's reference (`toy::model`): plain diffusion
//! loss (SFT on identical pairs) on style-A images only; every method starts from it. The
//! pretrained folder is cached under a key of everything that shapes it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{DType, Device, TensorData};
use serde::{Deserialize, Serialize};

use crate::models::clip::{ClipTextModel, config::ClipTextConfig};
use crate::models::folder::{save_as, save_component};
use crate::models::io::{write_atomic, write_tensors};
use crate::models::unet::UNet2DConditionModel;
use crate::models::weights::Weights;
use crate::objective::{FlowConfig, ObjectiveName};
use crate::toy::data::{Style, Subject, draws, render};
use crate::toy::model::{Conditioner, SIZE, text_encoder_config, unet_config};
use crate::train::config::TrainConfig;

/// How the reference is pretrained. Part of the cache key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub seed: u64,
    /// Style-A images per subject (random placements).
    pub images_per_subject: usize,
    /// Share of extra rows with the empty (all-zero) conditioning, so that classifier-free
    /// guidance has an unconditional model to push against.
    pub caption_dropout: f64,
    /// Data-parallel ranks (threads of this process) sharing each batch: the toy model's
    /// ops are too small for the backend's own threads, whole half-batches are not. Fixed
    /// (not the machine's core count) so that the reference is the same everywhere.
    pub ranks: usize,
    /// The objective the reference is pretrained with: the experiment's `[train] objective`
    /// and `[train.flow]` (the runs fine-tune it with the same one).
    #[serde(skip_serializing_if = "ObjectiveName::is_epsilon")]
    pub objective: ObjectiveName,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowConfig>,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            steps: 600,
            batch_size: 16,
            lr: 1e-3,
            seed: 0,
            images_per_subject: 24,
            caption_dropout: 0.1,
            ranks: 2,
            objective: ObjectiveName::Epsilon,
            flow: None,
        }
    }
}

/// One pairs file row: chosen and rejected images and the caption (`None`: empty prompt).
pub struct PairRow {
    pub chosen: Vec<f32>,
    pub rejected: Vec<f32>,
    pub caption: Option<String>,
}

/// Writes rows as a trainer pairs file (`train::data`).
pub fn write_pairs(path: &Path, rows: &[PairRow], cond: &Conditioner) -> Result<()> {
    let device = Device::default();
    let n = rows.len();
    let images = |f: &dyn Fn(&PairRow) -> &Vec<f32>| {
        TensorData::new(rows.iter().flat_map(|r| f(r).iter().copied()).collect::<Vec<f32>>(), [n, 3, SIZE, SIZE])
    };
    let c = cond.encode(&rows.iter().map(|r| r.caption.clone()).collect::<Vec<_>>(), &device)?;
    write_tensors(
        path,
        vec![
            ("chosen".into(), images(&|r| &r.chosen)),
            ("rejected".into(), images(&|r| &r.rejected)),
            ("encoder_hidden_states".into(), c.context.into_data()),
            ("text_embeds".into(), c.text_embeds.into_data()),
            ("time_ids".into(), c.time_ids.into_data()),
        ],
    )
}

/// Which preference the generated pairs express.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Chosen = style B (striped), rejected = style A (flat): the data is far from what
    /// the reference generates (the paper's reference mismatch).
    Style,
    /// Chosen = the right colour, rejected = a wrong colour, both in style A: the
    /// reference is not mismatched.
    Colour,
}

impl Variant {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "style" => Ok(Self::Style),
            "colour" | "color" => Ok(Self::Colour),
            other => anyhow::bail!("data.generated {other:?}: expected \"style\" or \"colour\""),
        }
    }

    /// `pairs_per_subject` pairs for every subject, from `seed`.
    pub fn rows(self, seed: u64, pairs_per_subject: usize) -> Vec<PairRow> {
        draws(seed, pairs_per_subject, SIZE)
            .into_iter()
            .map(|(s, p)| {
                let (chosen, rejected) = match self {
                    Self::Style => (render(s, Style::Striped, p, SIZE), render(s, Style::Flat, p, SIZE)),
                    Self::Colour => {
                        let wrong = s.with_colour((s.colour + 1) % crate::toy::data::COLOURS.len());
                        (render(s, Style::Flat, p, SIZE), render(wrong, Style::Flat, p, SIZE))
                    }
                };
                PairRow { chosen, rejected, caption: Some(s.caption()) }
            })
            .collect()
    }
}

/// Pretraining rows: style-A images (rejected = chosen; SFT never reads it) plus
/// empty-prompt rows.
fn pretrain_rows(p: &PretrainConfig) -> Vec<PairRow> {
    let mut rows: Vec<PairRow> = draws(p.seed, p.images_per_subject, SIZE)
        .into_iter()
        .map(|(s, pl)| {
            let img = render(s, Style::Flat, pl, SIZE);
            PairRow { chosen: img.clone(), rejected: img, caption: Some(s.caption()) }
        })
        .collect();
    let extra = (rows.len() as f64 * p.caption_dropout).round() as usize;
    for i in 0..extra {
        let img = rows[i * rows.len() / extra.max(1)].chosen.clone();
        rows.push(PairRow { chosen: img.clone(), rejected: img, caption: None });
    }
    rows
}

/// FNV-1a: a stable cache key (std's hasher is not stable across releases).
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReferenceInfo {
    pub pretrain: PretrainConfig,
    pub wall_s: f64,
    pub final_loss: f64,
}

/// The pretrained reference folder (`unet/`, `text_encoder/`), built on first use and then
/// reused: `<cache>/toy-reference-<key>/`. An interrupted pretraining resumes.
pub fn reference(cache: &Path, p: &PretrainConfig, device: Option<&str>) -> Result<(PathBuf, ReferenceInfo)> {
    let key = serde_json::json!({"v": 1, "pretrain": p, "unet": unet_config(), "text": text_encoder_config()});
    let dir = cache.join(format!("toy-reference-{:016x}", stable_hash(&key.to_string())));
    let info_path = dir.join("reference.json");
    if let Ok(text) = std::fs::read_to_string(&info_path) {
        let info: ReferenceInfo = serde_json::from_str(&text).with_context(|| info_path.display().to_string())?;
        eprintln!("reference: cached {} (pretrained in {:.1} s)", dir.display(), info.wall_s);
        return Ok((dir.join("pretrain"), info));
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let init = dir.join("init");
    let host = Device::default();
    if !init.join("unet").join("config.json").is_file() {
        host.seed(p.seed);
        let w = Weights::random(&host, DType::F32);
        let raw = unet_config();
        let unet = UNet2DConditionModel::load(&serde_json::from_value(raw.clone())?, &w)?;
        save_component(&unet, &raw, &init.join("unet"), DType::F32)?;
        let raw = text_encoder_config();
        let config: ClipTextConfig = serde_json::from_value(raw.clone())?;
        let encoder = ClipTextModel::load(&config, &w, true)?;
        let key = |n: String| if n.starts_with("text_projection") { n } else { format!("text_model.{n}") };
        save_as(&encoder, &raw, &init.join("text_encoder").join("model.safetensors"), DType::F32, key)?;
    }
    let pretrain = dir.join("pretrain");
    std::fs::create_dir_all(&pretrain)?;
    // The fine-tuning runs read the reference's text encoder from the pretrained folder.
    copy_dir(&init.join("text_encoder"), &pretrain.join("text_encoder"))?;
    let cond = Conditioner::load(&init, &host)?;
    let data = dir.join("pretrain-pairs.safetensors");
    if !data.is_file() {
        write_pairs(&data, &pretrain_rows(p), &cond)?;
    }
    let ranks = p.ranks.max(1);
    anyhow::ensure!(
        p.batch_size.is_multiple_of(ranks),
        "pretrain.batch_size {} is not a multiple of pretrain.ranks {ranks}",
        p.batch_size
    );
    let name = match device {
        Some(d) => d.to_string(),
        None => crate::device::select(None)?.backend.name().to_string(),
    };
    let mut config = TrainConfig {
        model: init,
        data,
        output_dir: pretrain.clone(),
        method: "sft".into(),
        steps: p.steps,
        batch_size: p.batch_size / ranks,
        devices: if ranks > 1 { vec![name; ranks] } else { vec![] },
        seed: p.seed,
        lr_schedule: crate::train::lr::LrSchedule::Cosine,
        warmup_steps: p.steps / 20,
        checkpoint_every: 100,
        keep_checkpoints: 1,
        device: device.map(String::from),
        objective: p.objective,
        flow: p.flow.clone(),
        ..TrainConfig::defaults()
    };
    config.optimizer.lr = p.lr;
    config.optimizer.weight_decay = Some(0.0);
    let resume = crate::train::checkpoint::list(&pretrain).map(|l| !l.is_empty()).unwrap_or(false);
    if !resume {
        crate::train::outdir::discard_partial(&pretrain)?;
    }
    eprintln!("reference: pretraining the toy model on style-A images ({} steps) into {}", p.steps, dir.display());
    let t0 = Instant::now();
    let final_loss = crate::train::run::train(&config, &crate::train::run::Start::resume(resume.then_some("latest")))?;
    let info = ReferenceInfo { pretrain: p.clone(), wall_s: t0.elapsed().as_secs_f64(), final_loss };
    write_atomic(&info_path, serde_json::to_string_pretty(&info)?.as_bytes())?;
    Ok((pretrain, info))
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))
            .with_context(|| format!("copying {}", entry.path().display()))?;
    }
    Ok(())
}

/// The fixed evaluation prompts: every subject, `seeds` samples each.
pub fn eval_subjects(seeds: usize) -> Vec<Subject> {
    Subject::all().into_iter().flat_map(|s| std::iter::repeat_n(s, seeds)).collect()
}
