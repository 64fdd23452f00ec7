//! `mapo generate` and `mapo tokenize`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Tensor};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::DeviceArgs;
use crate::device::select;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::io::{SafeTensorFiles, write_tensors};
use crate::models::lora::{BlockLayout, apply_lora_file};
use crate::sample::pipeline::SdxlPipeline;
use crate::sample::validate::{decode_images, initial_noise};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A diffusers SDXL pipeline folder, or an SDXL single file.
    #[arg(long)]
    pub model: PathBuf,
    /// With `--model FILE` of an architecture other than SDXL base: a diffusers folder of it
    /// (configs, tokenizers, scheduler; docs/cli.md).
    #[arg(long = "config", value_name = "DIR")]
    pub model_config: Option<PathBuf>,
    #[arg(long, required_unless_present = "prompts")]
    pub prompt: Option<String>,
    /// A text file with one prompt per line (instead of --prompt).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Empty (the default) uses SDXL's all-zero negative embeddings.
    #[arg(long)]
    pub negative_prompt: Option<String>,
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// euler (SDXL's default) or ddim.
    #[arg(long, default_value = "euler", value_parser = ["euler", "ddim"])]
    pub sampler: String,
    #[arg(long, default_value_t = 5.0)]
    pub guidance: f64,
    /// Default: the UNet's `sample_size` × the VAE's factor, as diffusers (1024 for SDXL).
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    /// Seed of the initial noise (image i of a run uses seed + i).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// Initial noise [1,4,h,w] (before the scheduler's init sigma), to compare with diffusers.
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Write the final latents (before VAE decoding) here.
    #[arg(long)]
    pub save_latents: Option<PathBuf>,
    /// A fine-tuned diffusers `unet/` folder to use instead of the pipeline's.
    #[arg(long)]
    pub unet: Option<PathBuf>,
    /// A diffusers/PEFT LoRA file (`pytorch_lora_weights.safetensors`) to fold into the UNet.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Output PNG; with several images, `-<n>` is added before the extension.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Option ranges, checked before any model is loaded.
fn check_options(args: &GenerateArgs) -> Result<()> {
    for (name, v) in [("--width", args.width), ("--height", args.height)] {
        anyhow::ensure!(v.is_none_or(|v| (1..=8192).contains(&v)), "{name} {}: must be in 1..=8192", v.unwrap_or(0));
    }
    anyhow::ensure!((1..=1000).contains(&args.steps), "--steps {}: must be in 1..=1000", args.steps);
    anyhow::ensure!(args.guidance.is_finite() && args.guidance >= 0.0, "--guidance {}: must be ≥ 0", args.guidance);
    anyhow::ensure!(args.num_images > 0, "--num-images must be > 0");
    Ok(())
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    crate::models::folder::set_single_file_configs(args.model_config.as_deref());
    check_options(args)?;
    crate::family::Family::detect(&args.model)?.require_supported(&args.model, "generate with")?;
    let selected = select(args.device.device.as_deref())?;
    let dtype = selected.precision(&args.device.dtype)?;
    let device = selected.device;
    let prompts: Vec<String> = match (&args.prompt, &args.prompts) {
        (Some(p), None) => vec![p.clone()],
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {}", file.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        _ => bail!("give either --prompt or --prompts"),
    };
    if prompts.is_empty() {
        bail!("{}: no prompt in the file", args.prompts.as_ref().map_or(String::new(), |p| p.display().to_string()));
    }
    let mut pipe = SdxlPipeline::load(&args.model, args.unet.as_deref(), &device, dtype)?;
    if let Some(lora) = &args.lora {
        pipe.unet = apply_lora_file(pipe.unet, lora, &BlockLayout::of(&pipe.unet_config)?)?;
    }
    let f = pipe.vae_scale_factor();
    // diffusers' default: the UNet's sample_size × the VAE's factor (read once, if needed).
    let default_size = match (args.width, args.height) {
        (Some(_), Some(_)) => 0,
        _ => {
            let unet_dir = match &args.unet {
                Some(d) => d.clone(),
                None => crate::models::folder::component_dir(&args.model, "unet")?,
            };
            let (raw, _) = crate::models::config::read_config::<serde_json::Value>(&unet_dir)?;
            raw["sample_size"].as_u64().map_or(128, |s| s as usize) * f
        }
    };
    let (width, height) = (args.width.unwrap_or(default_size), args.height.unwrap_or(default_size));
    if !width.is_multiple_of(f) || !height.is_multiple_of(f) {
        bail!("--width and --height must be multiples of {f} (the VAE's factor)");
    }
    // Each down block but the last halves the latents; the up blocks must meet them again.
    let unet_factor = f << pipe.unet.down_blocks.len().saturating_sub(1);
    if !width.is_multiple_of(unet_factor) || !height.is_multiple_of(unet_factor) {
        bail!("--width and --height must be multiples of {unet_factor} for this model (VAE × UNet downsampling)");
    }
    let shape = [pipe.unet.conv_in.weight.dims()[1], height / f, width / f];
    let total = prompts.len() * args.num_images;
    if args.init_latents.is_some() && total != 1 {
        bail!("--init-latents gives the noise of one image; generate one image with it");
    }
    let bar = ProgressBar::new((total * args.steps) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}")
            .expect("template"),
    );
    let mut outputs = Vec::new();
    let mut all_latents = Vec::new();
    for (p, prompt) in prompts.iter().enumerate() {
        for k in 0..args.num_images {
            let index = p * args.num_images + k;
            let noise = match &args.init_latents {
                Some(file) => read_latents(file, &device, shape)?,
                None => initial_noise(args.seed + index as u64, 1, shape, &device),
            };
            bar.set_message(format!("image {}/{total}", index + 1));
            let latents = pipe.generate_latents(
                prompt,
                args.negative_prompt.as_deref(),
                &args.sampler,
                args.steps,
                args.guidance,
                noise.cast(dtype),
                &mut |_| bar.inc(1),
            )?;
            let latents = latents.cast(DType::F32);
            all_latents.push(latents.clone());
            let out = if total == 1 { args.out.clone() } else { numbered(&args.out, index) };
            let img = decode_images(latents, &pipe.vae, pipe.vae_config.scaling_factor)?.remove(0);
            // Through a temporary name beside it: an interrupted run leaves no half image.
            crate::util::save_image(&out, &img)?;
            outputs.push(out);
        }
    }
    bar.finish();
    if let Some(path) = &args.save_latents {
        write_tensors(path, vec![("latents".into(), Tensor::cat(all_latents, 0).into_data())])?;
    }
    for o in outputs {
        println!("{}", o.display());
    }
    Ok(())
}

fn read_latents(file: &Path, device: &burn::tensor::Device, shape: [usize; 3]) -> Result<Tensor<4>> {
    let f = SafeTensorFiles::open_file(file)?;
    let name = if f.get("latents").is_some() {
        "latents".to_string()
    } else {
        let names: Vec<&str> = f.names().collect();
        match names.as_slice() {
            [one] => one.to_string(),
            _ => bail!("{}: expected a tensor named `latents`", file.display()),
        }
    };
    let t = f.float::<4>(&name, device, DType::F32)?;
    let [c, h, w] = shape;
    if t.dims() != [1, c, h, w] {
        bail!("{}: {name} has shape {:?}, expected [1, {c}, {h}, {w}] for this size", file.display(), t.dims());
    }
    Ok(t)
}

fn numbered(out: &Path, i: usize) -> PathBuf {
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    let ext = out.extension().and_then(|s| s.to_str()).unwrap_or("png");
    out.with_file_name(format!("{stem}-{i}.{ext}"))
}

pub fn tokenize(model: &Path, prompt: &str) -> Result<()> {
    let model = crate::models::folder::model_folder(model)?;
    let one = ClipTokenizer::from_dir(&model.join("tokenizer"))?.encode(prompt);
    let two = ClipTokenizer::from_dir(&model.join("tokenizer_2"))?.encode(prompt);
    println!("{}", serde_json::json!({"input_ids": one, "input_ids_2": two}));
    Ok(())
}
