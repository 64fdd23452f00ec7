//! `mapo generate` and `mapo tokenize`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Tensor};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::DeviceArgs;
use crate::device::select;
use crate::family::Family;
use crate::models::clip::tokenizer::ClipTokenizer;
use crate::models::io::{SafeTensorFiles, write_tensors};
use crate::models::lora::{BlockLayout, apply_lora_file, apply_transformer_lora_file};
use crate::sample::flux::FluxPipeline;
use crate::sample::pipeline::SdxlPipeline;
use crate::sample::sd3::Sd3Pipeline;
use crate::sample::validate::{decode_images, initial_noise, to_images};

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
    /// Classifier-free guidance (SDXL, SD3; default 5), or FLUX.1 [dev]'s embedded guidance
    /// scale (default 3.5; [schnell] ignores it).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// FLUX: true classifier-free guidance with `--negative-prompt` (diffusers'
    /// `true_cfg_scale`; off at ≤ 1, the default): each step runs the transformer twice.
    #[arg(long)]
    pub true_cfg: Option<f64>,
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
    /// A diffusers/PEFT LoRA file (`pytorch_lora_weights.safetensors`) to fold into the
    /// denoiser (SDXL: PEFT or kohya; SD3: PEFT `transformer.*` keys).
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// SD3, FLUX: a fine-tuned diffusers `transformer/` folder to use instead of the pipeline's.
    #[arg(long)]
    pub transformer: Option<PathBuf>,
    /// SD3, FLUX: T5 tokens per prompt (diffusers' `max_sequence_length`, default 256 for
    /// SD3, 512 for FLUX).
    #[arg(long)]
    pub max_sequence_length: Option<usize>,
    /// SD3: leave T5 out (zeros in its place, as diffusers allows; saves its ~9 GB).
    #[arg(long)]
    pub no_t5: bool,
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
    for (name, v) in [("--guidance", args.guidance), ("--true-cfg", args.true_cfg)] {
        anyhow::ensure!(v.is_none_or(|v| v.is_finite() && v >= 0.0), "{name} {}: must be ≥ 0", v.unwrap_or(0.0));
    }
    anyhow::ensure!(args.num_images > 0, "--num-images must be > 0");
    anyhow::ensure!(
        args.max_sequence_length.is_none_or(|n| (1..=512).contains(&n)),
        "--max-sequence-length {}: must be in 1..=512",
        args.max_sequence_length.unwrap_or(0)
    );
    Ok(())
}

/// The pipeline of the model folder's family.
enum Pipe {
    Sdxl(Box<SdxlPipeline>),
    Sd3(Box<Sd3Pipeline>),
    Flux(Box<FluxPipeline>),
}

/// SDXL's and SD3's default classifier-free guidance scale.
const DEFAULT_CFG: f64 = 5.0;

impl Pipe {
    fn load(args: &GenerateArgs, family: Family, device: &Device, dtype: DType) -> Result<Self> {
        let flow_only = [
            ("--transformer", args.transformer.is_some()),
            ("--max-sequence-length", args.max_sequence_length.is_some()),
        ];
        let sd3_only = [("--no-t5", args.no_t5)];
        let flux_only = [("--true-cfg", args.true_cfg.is_some())];
        let sdxl_only = [("--unet", args.unet.is_some()), ("--sampler ddim", args.sampler != "euler")];
        let refuse = |opts: &[(&str, bool)], what: &str| match opts.iter().find(|(_, on)| *on) {
            Some((name, _)) => {
                bail!("{name} applies to {what} models; {} is a {} folder", args.model.display(), family.name())
            }
            None => Ok(()),
        };
        match family {
            Family::Sdxl => {
                refuse(&flow_only, "SD3 and FLUX")?;
                refuse(&sd3_only, "SD3")?;
                refuse(&flux_only, "FLUX")?;
                let mut pipe = SdxlPipeline::load(&args.model, args.unet.as_deref(), device, dtype)?;
                if let Some(lora) = &args.lora {
                    pipe.unet = apply_lora_file(pipe.unet, lora, &BlockLayout::of(&pipe.unet_config)?)?;
                }
                Ok(Self::Sdxl(Box::new(pipe)))
            }
            Family::Sd3 => {
                refuse(&sdxl_only, "SDXL")?;
                refuse(&flux_only, "FLUX")?;
                let mut pipe = Sd3Pipeline::load(&args.model, args.transformer.as_deref(), !args.no_t5, device, dtype)?;
                if let Some(n) = args.max_sequence_length {
                    pipe.prompts.max_sequence_length = n;
                }
                if let Some(lora) = &args.lora {
                    pipe.transformer = apply_transformer_lora_file(pipe.transformer, lora)?;
                }
                Ok(Self::Sd3(Box::new(pipe)))
            }
            Family::Flux => {
                refuse(&sdxl_only, "SDXL")?;
                refuse(&sd3_only, "SD3")?;
                let mut pipe = FluxPipeline::load(&args.model, args.transformer.as_deref(), device, dtype)?;
                if let Some(n) = args.max_sequence_length {
                    pipe.prompts.max_sequence_length = n;
                }
                if let Some(lora) = &args.lora {
                    pipe.transformer = apply_transformer_lora_file(pipe.transformer, lora)?;
                }
                if !pipe.transformer.guidance_embeds() && args.guidance.is_some() {
                    eprintln!("note: this FLUX transformer does not embed guidance ([schnell]); --guidance is ignored");
                }
                if args.negative_prompt.is_some() && args.true_cfg.is_none_or(|g| g <= 1.0) {
                    eprintln!("note: FLUX uses --negative-prompt only with --true-cfg > 1; it is ignored");
                }
                Ok(Self::Flux(Box::new(pipe)))
            }
        }
    }

    fn vae_scale_factor(&self) -> usize {
        match self {
            Self::Sdxl(p) => p.vae_scale_factor(),
            Self::Sd3(p) => p.vae_scale_factor(),
            Self::Flux(p) => p.vae_scale_factor(),
        }
    }

    /// Image sides must be multiples of this: the VAE's factor × the denoiser's own.
    fn size_factor(&self) -> usize {
        let f = self.vae_scale_factor();
        match self {
            // Each down block but the last halves the latents; the up blocks must meet them again.
            Self::Sdxl(p) => f << p.unet.down_blocks.len().saturating_sub(1),
            Self::Sd3(p) => f * p.transformer_config.patch_size,
            // 2×2 latent patches packed into tokens.
            Self::Flux(_) => f * 2,
        }
    }

    fn latent_channels(&self) -> usize {
        match self {
            Self::Sdxl(p) => p.unet.conv_in.weight.dims()[1],
            Self::Sd3(p) => p.transformer_config.in_channels,
            Self::Flux(p) => p.transformer_config.latent_channels(),
        }
    }

    /// diffusers' default side: the denoiser's `sample_size` (read with it) × the VAE's factor.
    fn default_size(&self) -> usize {
        self.vae_scale_factor()
            * match self {
                Self::Sdxl(p) => p.unet_config.sample_size.unwrap_or(128),
                Self::Sd3(p) => p.transformer_config.sample_size,
                // FluxPipeline's `default_sample_size`.
                Self::Flux(_) => 128,
            }
    }

    fn latents(
        &self,
        args: &GenerateArgs,
        prompt: &str,
        noise: Tensor<4>,
        on_step: &mut dyn FnMut(usize),
    ) -> Result<Tensor<4>> {
        let negative = args.negative_prompt.as_deref();
        match self {
            Self::Sdxl(p) => {
                let g = args.guidance.unwrap_or(DEFAULT_CFG);
                p.generate_latents(prompt, negative, &args.sampler, args.steps, g, noise, on_step)
            }
            Self::Sd3(p) => {
                p.generate_latents(prompt, negative, args.steps, args.guidance.unwrap_or(DEFAULT_CFG), noise, on_step)
            }
            Self::Flux(p) => {
                let g = args.guidance.unwrap_or(crate::sample::flux::DEFAULT_GUIDANCE);
                p.generate_latents(prompt, negative, args.steps, g, args.true_cfg.unwrap_or(1.0), noise, on_step)
            }
        }
    }

    fn image(&self, latents: Tensor<4>) -> Result<image::RgbImage> {
        Ok(match self {
            Self::Sdxl(p) => decode_images(latents, &p.vae, p.vae_config.scaling_factor)?.remove(0),
            Self::Sd3(p) => to_images(p.decode(latents))?.remove(0),
            Self::Flux(p) => to_images(p.decode(latents))?.remove(0),
        })
    }
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    crate::models::folder::set_single_file_configs(args.model_config.as_deref());
    check_options(args)?;
    let family = Family::detect(&args.model)?;
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
    let pipe = Pipe::load(args, family, &device, dtype)?;
    let f = pipe.vae_scale_factor();
    let default_size = match (args.width, args.height) {
        (Some(w), Some(h)) => w.max(h),
        _ => pipe.default_size(),
    };
    let (width, height) = (args.width.unwrap_or(default_size), args.height.unwrap_or(default_size));
    if !width.is_multiple_of(f) || !height.is_multiple_of(f) {
        bail!("--width and --height must be multiples of {f} (the VAE's factor)");
    }
    let size_factor = pipe.size_factor();
    if !width.is_multiple_of(size_factor) || !height.is_multiple_of(size_factor) {
        bail!("--width and --height must be multiples of {size_factor} for this model (VAE × denoiser downsampling)");
    }
    let shape = [pipe.latent_channels(), height / f, width / f];
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
            let latents = pipe.latents(args, prompt, noise.cast(dtype), &mut |_| bar.inc(1))?;
            let latents = latents.cast(DType::F32);
            all_latents.push(latents.clone());
            let out = if total == 1 { args.out.clone() } else { numbered(&args.out, index) };
            let img = pipe.image(latents)?;
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

/// Every tokenizer folder present: `input_ids` (tokenizer/), `input_ids_2` (tokenizer_2/),
/// `input_ids_3` (tokenizer_3/). A CLIP folder (vocab.json) gives 77 ids; a T5 folder
/// (tokenizer.json: SD3's third, FLUX's second) `max_sequence_length` ids.
pub fn tokenize(model: &Path, prompt: &str, max_sequence_length: Option<usize>) -> Result<()> {
    let model = crate::models::folder::model_folder(model)?;
    let mut out = serde_json::Map::new();
    let default = match Family::detect(&model) {
        Ok(Family::Flux) => crate::sample::flux::MAX_SEQUENCE_LENGTH,
        _ => crate::sample::sd3::MAX_SEQUENCE_LENGTH,
    };
    let n = max_sequence_length.unwrap_or(default);
    anyhow::ensure!((1..=4096).contains(&n), "--max-sequence-length {n}: must be in 1..=4096");
    for (dir, key) in [("tokenizer", "input_ids"), ("tokenizer_2", "input_ids_2"), ("tokenizer_3", "input_ids_3")] {
        let dir = model.join(dir);
        if dir.join("vocab.json").is_file() {
            out.insert(key.into(), ClipTokenizer::from_dir(&dir)?.encode(prompt).into());
        } else if dir.join("tokenizer.json").is_file() {
            let t5 = crate::models::t5::tokenizer::T5Tokenizer::from_dir(&dir)?;
            out.insert(key.into(), t5.encode(prompt, n)?.into());
        }
    }
    if out.is_empty() {
        bail!("{}: no tokenizer/, tokenizer_2/ or tokenizer_3/ folder", model.display());
    }
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
