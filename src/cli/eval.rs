//! `mapo eval`: variants of one model (the base folder, `--unet` fine-tunes, `--lora`
//! adapters) on a prompt suite, each image from the same initial noise in every variant
//! (the seed depends on the prompt and seed index only), images cached so that another
//! scorer never regenerates them, then every scorer on every variant and a report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{DeviceArgs, select};
use crate::eval::compare::{summarise, write};
use crate::eval::images::{Renderer, Settings};
use crate::eval::made_with::MadeWith;
use crate::eval::preprocess::read_rgb;
use crate::eval::scorer::{Scorer, ScorerFiles, load_scorer};
use crate::eval::suite::load_suite;
use crate::models::folder::component_dir;
use crate::models::lora::{BlockLayout, apply_lora_file};
use crate::models::unet::UNet2DConditionModel;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The base model: an SDXL pipeline folder, or the built-in toy model's reference
    /// folder (`<runs>/_cache/toy-reference-*/pretrain`), or an SDXL single file.
    #[arg(long)]
    pub model: PathBuf,
    /// With `--model FILE` of an architecture other than SDXL base: a diffusers folder of it
    /// (configs, tokenizers, scheduler; docs/cli.md).
    #[arg(long = "config", value_name = "DIR")]
    pub model_config: Option<PathBuf>,
    /// The prompt suite: a text file (one prompt per line), JSON lines with "prompt" or
    /// "caption", or parquet (file, folder or pattern; its distinct captions, e.g.
    /// Pick-a-Pic's test split).
    #[arg(long)]
    pub prompts: PathBuf,
    /// The JSON field or parquet column holding the prompts (default: prompt/caption).
    #[arg(long)]
    pub prompt_column: Option<String>,
    /// Only the suite's first N prompts.
    #[arg(long)]
    pub max_prompts: Option<usize>,
    /// `NAME=base`, `NAME=unet:DIR` or `NAME=lora:FILE` (repeatable; the first is the
    /// baseline of the win rates). Default: one variant, `base`.
    #[arg(long = "variant", value_name = "NAME=SPEC")]
    pub variants: Vec<String>,
    /// `pickscore=DIR`, `clip=DIR`, `aesthetic=FILE.pth` (with --clip), `hps=FILE.pt` (with
    /// --tokenizer); for the toy model `style_b` and `fidelity` (no path) (repeatable).
    #[arg(long = "scorer", value_name = "NAME=PATH", required = true)]
    pub scorers: Vec<String>,
    /// aesthetic: the ViT-L/14 CLIPModel folder.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// hps: a CLIP tokenizer folder.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Images per prompt (seeds 0..N).
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f64,
    /// Default: the UNet's sample_size × the VAE's factor (16 for the toy model).
    #[arg(long)]
    pub size: Option<usize>,
    /// Where images, scores and the report go.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
}

enum Variant {
    Base,
    Unet(PathBuf),
    Lora(PathBuf),
}

fn parse_variant(s: &str) -> Result<(String, Variant)> {
    let (name, spec) = s.split_once('=').with_context(|| format!("--variant {s:?}: expected NAME=SPEC"))?;
    ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "--variant {s:?}: the name must be letters, digits, - _ . (it names a folder)"
    );
    let v = match spec.split_once(':') {
        _ if spec == "base" => Variant::Base,
        Some(("unet", p)) => Variant::Unet(PathBuf::from(p)),
        Some(("lora", p)) => Variant::Lora(PathBuf::from(p)),
        _ => bail!("--variant {s:?}: SPEC is base, unet:DIR or lora:FILE"),
    };
    Ok((name.to_string(), v))
}

fn scorer_of(spec: &str, args: &EvalArgs, device: &burn::tensor::Device) -> Result<Box<dyn Scorer>> {
    let (name, path) = match spec.split_once('=') {
        Some(np) => np,
        None if crate::toy::score::ToyScorer::from_name(spec).is_some() => (spec, ""),
        None => bail!("--scorer {spec:?}: expected NAME=PATH"),
    };
    let extra = ScorerFiles { clip: args.clip.as_deref(), config: None, tokenizer: args.tokenizer.as_deref() };
    load_scorer(name, Path::new(path), extra, device).with_context(|| format!("--scorer {spec}"))
}

pub fn run(args: &EvalArgs) -> Result<()> {
    crate::models::folder::set_single_file_configs(args.model_config.as_deref());
    let family = crate::family::Family::detect(&args.model)?;
    if family != crate::family::Family::Sdxl {
        bail!(
            "{}: mapo eval samples SDXL UNets only for now; for a {} model, `mapo generate` the images and \
             `mapo score` them",
            args.model.display(),
            family.name()
        );
    }
    ensure!(args.seeds > 0 && (1..=1000).contains(&args.steps), "--seeds must be > 0 and --steps in 1..=1000");
    let prompts = load_suite(&args.prompts, args.prompt_column.as_deref(), args.max_prompts)?;
    let specs = if args.variants.is_empty() { vec!["base=base".to_string()] } else { args.variants.clone() };
    let variants: Vec<(String, Variant)> = specs.iter().map(|s| parse_variant(s)).collect::<Result<_>>()?;
    for (i, (name, _)) in variants.iter().enumerate() {
        ensure!(!variants[..i].iter().any(|(n, _)| n == name), "--variant {name}: the name is given twice");
    }
    let selected = select(args.device.device.as_deref())?;
    let dtype = selected.precision(&args.device.dtype)?;
    let device = selected.device;
    let renderer = Renderer::load(&args.model, &device, dtype)?;
    // Scorers load first: a bad scorer path fails before minutes of generation.
    let scorers: Vec<Box<dyn Scorer>> =
        args.scorers.iter().map(|s| scorer_of(s, args, &device)).collect::<Result<_>>()?;
    let image = |v: &str, p: usize, s: usize| args.out.join("images").join(v).join(format!("{p:05}-s{s}.png"));
    // One writer per evaluation folder; cached images only where they were made alike.
    let _lock = crate::util::lock::lock(&args.out)?;
    let model = std::fs::canonicalize(&args.model).unwrap_or_else(|_| args.model.clone());
    for ((name, _), spec) in variants.iter().zip(&specs) {
        let made_with = MadeWith {
            model: model.display().to_string(),
            variant: spec.split_once('=').map_or(spec.as_str(), |(_, v)| v).to_string(),
            sampler: "euler".into(),
            steps: args.steps,
            guidance: args.guidance,
            size: args.size,
            precision: args.device.dtype.clone(),
            prompts: prompts.clone(),
        };
        crate::eval::made_with::claim(&args.out.join("images").join(name), &made_with)?;
    }

    // What is not on disk yet, per variant (the rest is reused).
    let missing: Vec<Vec<(usize, usize)>> = variants
        .iter()
        .map(|(n, _)| {
            (0..prompts.len())
                .flat_map(|p| (0..args.seeds).map(move |s| (p, s)))
                .filter(|&(p, s)| !image(n, p, s).is_file())
                .collect()
        })
        .collect();
    let todo: usize = missing.iter().map(Vec::len).sum();
    let bar = ProgressBar::new(todo as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}")
            .expect("template"),
    );
    for ((name, variant), missing) in variants.iter().zip(missing) {
        if missing.is_empty() {
            continue;
        }
        bar.set_message(name.clone());
        let unet_dir = match variant {
            Variant::Unet(d) => d.clone(),
            _ => component_dir(&args.model, "unet")?,
        };
        let (mut unet, unet_config) = UNet2DConditionModel::from_dir(&unet_dir, &device, renderer.dtype())?;
        if let Variant::Lora(f) = variant {
            unet = apply_lora_file(unet, f, &BlockLayout::of(&unet_config)?)?;
        }
        let size = args.size.unwrap_or(renderer.default_size(unet_config.sample_size));
        renderer.check(&unet, size).with_context(|| format!("--variant {name}"))?;
        let settings = Settings { steps: args.steps, guidance: args.guidance, size };
        let dir = args.out.join("images").join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (p, s) in missing {
            let img = renderer.suite_image(&unet, (p, &prompts[p]), s, &settings)?;
            // Through a temporary name, so an interrupted run never leaves a half image to reuse.
            crate::util::save_image(&image(name, p, s), &img)?;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let names: Vec<String> = variants.iter().map(|(n, _)| n.clone()).collect();
    let bar = ProgressBar::new((scorers.len() * names.len() * prompts.len() * args.seeds) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} scores [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}")
            .expect("template"),
    );
    let mut results = Vec::new();
    for scorer in &scorers {
        let mut per_variant = Vec::new();
        for name in &names {
            bar.set_message(format!("{} on {name}", scorer.name()));
            let mut scores = Vec::new();
            // One prompt's images at a time: memory does not grow with the suite.
            for (p, prompt) in prompts.iter().enumerate() {
                let images: Vec<_> = (0..args.seeds).map(|s| read_rgb(&image(name, p, s))).collect::<Result<_>>()?;
                scores.extend(scorer.score(&images, &vec![prompt.clone(); args.seeds])?);
                bar.inc(args.seeds as u64);
            }
            per_variant.push(scores);
        }
        results.push(summarise(scorer.name(), &names, &per_variant));
    }
    bar.finish_and_clear();
    let header = format!(
        "{} prompts from {} × {} seeds, {} Euler steps, guidance {}; model {}",
        prompts.len(),
        args.prompts.display(),
        args.seeds,
        args.steps,
        args.guidance,
        args.model.display()
    );
    write(&args.out, &results, &header)?;
    crate::eval::compare::grid(&args.out, &names, prompts.len().min(8))?;
    eprintln!("report: {}", args.out.join("report.md").display());
    Ok(())
}
