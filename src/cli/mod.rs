//! The command-line interface: argument definitions, and one small function per command.

pub mod cache;
pub mod eval;
pub mod forward;
pub mod generate;
pub mod lora;
pub mod online;
pub mod pairs;
pub mod score;
pub mod train_step;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "mapo",
    version,
    about = "Preference fine-tuning of SDXL-family diffusion models (SFT, Diffusion-DPO, MaPO) on Burn"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::device::DeviceArgs;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Text to image with an SDXL pipeline folder (options: docs/cli.md).
    Generate(generate::GenerateArgs),
    /// Speed and memory benchmarks, one JSON line per run (see benches/RESULTS.md).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Fine-tune a denoiser (SDXL UNet, SD3 transformer) with a preference method (see experiments/ and docs/training.md).
    Train {
        /// The run's TOML config (`mapo train FILE` or `mapo train --config FILE`).
        #[arg(value_name = "FILE", required_unless_present = "config")]
        file: Option<PathBuf>,
        #[arg(long, conflicts_with = "file")]
        config: Option<PathBuf>,
        /// Override a config key, e.g. `--set optimizer.lr=1e-4` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Resume from `latest` or a checkpoint folder.
        #[arg(long)]
        resume: Option<String>,
        /// Start afresh in an output folder that holds another run, moving that run aside
        /// to `<output_dir>.previous-N` (nothing is deleted).
        #[arg(long, conflicts_with = "resume")]
        overwrite: bool,
        /// Keep at most N checkpoints (the config's `keep_checkpoints`).
        #[arg(long)]
        keep: Option<usize>,
    },
    /// Run an experiment file (methods × sweeps × seeds) and write its report:
    /// `<runs_dir>/<name>/report.md`, `report.json`, `curves.png`, `samples.png`.
    /// Finished runs are skipped; an interrupted run resumes from its checkpoint.
    Experiment {
        /// The experiment's TOML file, see experiments/ (`mapo experiment FILE` or
        /// `mapo experiment --config FILE`).
        #[arg(value_name = "FILE", required_unless_present = "config")]
        file: Option<PathBuf>,
        #[arg(long, conflicts_with = "file")]
        config: Option<PathBuf>,
        /// Override a key, e.g. `--set train.steps=20` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long, env = "MAPO_DEVICE")]
        device: Option<String>,
        /// Print the planned runs and exit.
        #[arg(long)]
        dry_run: bool,
        /// Independent runs at once, each in its own process with its share of the cores
        /// (default: the number of cores; 1 = one after another in this process).
        #[arg(long)]
        jobs: Option<usize>,
        /// Run only this planned run and write no report (what --jobs starts per run).
        #[arg(long, value_name = "RUN")]
        only: Option<String>,
    },
    /// Rebuild a report from run folders or experiment folders (e.g. the same experiment on
    /// two backends side by side).
    Report {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where to write report.md etc. (default: the folder given, when there is one).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Encode a parquet preference set once (VAE latent distributions + prompt embeddings)
    /// into a sharded cache that `mapo train` reads as `data = "DIR"`. Resumable.
    Cache(crate::cli::cache::CacheCommand),
    /// Developer commands: forward, convert, tokenize, make-pairs, random-model, params
    /// (also accepted without `dev`).
    #[command(subcommand)]
    Dev(DevCommand),
    /// Compare variants of one model (base, --unet fine-tunes, LoRAs) on a prompt suite with
    /// reward models: identical noise per prompt and seed, cached images, means with 95%
    /// bootstrap intervals, win rates against the first variant, report.md + scores.png + grid.png.
    Eval(crate::cli::eval::EvalArgs),
    /// Score images with a reward model (--scorer pickscore, hps, aesthetic or clip):
    /// `--pairs` JSON lines `{"image", "prompt"}` in, the same rows with `"score"` out.
    Score(crate::cli::score::ScoreArgs),
    /// LoRA files: convert between the diffusers/PEFT and kohya layouts.
    #[command(subcommand)]
    Lora(crate::cli::lora::LoraCommand),
}

/// Developer commands: parity checks by other tools, fixtures, model surgery. Also
/// accepted without `dev` (`mapo forward ...`, as docs/design.md §2 has it).
#[derive(Subcommand, Debug)]
pub enum DevCommand {
    /// Run one model component on tensors from a safetensors file (inputs and outputs: docs/design.md §2).
    Forward(ForwardArgs),
    /// Load a component folder and write it back as a diffusers folder (f32/f16/bf16); or,
    /// with --to, a whole SDXL model between a diffusers folder and one single file
    /// (A1111/ComfyUI layout).
    Convert {
        /// unet or vae (without --to).
        component: Option<String>,
        /// A diffusers pipeline folder (or the component folder itself); with --to diffusers,
        /// an SDXL single file (.safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Output component folder; with --to, the single file or the pipeline folder.
        #[arg(long)]
        out: PathBuf,
        /// single-file (from a diffusers folder) or diffusers (from a single file).
        #[arg(long)]
        to: Option<ConvertTarget>,
        /// --to diffusers: a diffusers folder of the same architecture, for the configs,
        /// tokenizers and scheduler (and any component the file lacks).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Storage dtype of the written weights (default: f32; --to diffusers: as stored).
        #[arg(long)]
        dtype: Option<String>,
    },
    /// Print both tokenizers' ids for a prompt as JSON.
    Tokenize {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        /// T5 ids per prompt (`tokenizer_3/`): default 256 for SD3, 512 for FLUX.
        #[arg(long)]
        max_sequence_length: Option<usize>,
    },
    /// Write a synthetic pairs file for a model folder's denoiser (UNet or SD3 transformer) (demos and tests): chosen
    /// latents are smooth patterns, rejected ones are noise, embeddings are random.
    MakePairs {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 16)]
        pairs: usize,
        /// Latent size h×w.
        #[arg(long, default_value = "8x8")]
        size: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write a complete `mapo cache` folder at --out instead of a pairs file.
        #[arg(long)]
        cache: bool,
        /// Pairs per cache shard (with --cache).
        #[arg(long, default_value_t = 256)]
        shard_size: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a randomly initialised component folder with the structure of a config.json
    /// (for benchmarks and memory checks at the real model size without its weights).
    RandomModel {
        /// unet or vae.
        component: String,
        /// A diffusers config.json for that component.
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Storage dtype of the written weights.
        #[arg(long, default_value = "f16")]
        dtype: String,
    },
    /// Print the parameter count of each component of a diffusers folder.
    Params {
        /// A diffusers pipeline folder, or one component folder (unet/, vae/).
        #[arg(long)]
        model: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Preference training steps of a random-init UNet on a fixed batch.
    TrainStep(crate::bench::TrainBench),
    /// One online iteration (GRPO or NFT: sampling, then training) of a random-init SD3 transformer.
    Online(crate::bench::online::OnlineBench),
    /// The largest batch whose training step fits (a child process per trial).
    MaxBatch(crate::bench::max_batch::MaxBatchBench),
    /// A reward model's towers at the real size (random weights): scoring time, memory.
    Score(crate::bench::score::ScoreBench),
    /// Parquet streaming + image decode + transform throughput.
    Data(crate::bench::data::DataBench),
    /// Guided Euler sampling of a random-init UNet (no text encoders, no VAE).
    Generate {
        #[arg(long, default_value = "tiny")]
        model: String,
        #[arg(long, default_value_t = 64)]
        resolution: usize,
        #[arg(long, default_value_t = 30)]
        steps: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Unet,
    VaeEncode,
    VaeDecode,
    /// CLIP ViT-L: `input_ids` → `hidden_states` (penultimate), `last_hidden_state`.
    TextEncoder,
    /// OpenCLIP bigG: `input_ids` → `hidden_states` (penultimate), `text_embeds`.
    #[value(name = "text-encoder-2")]
    TextEncoder2,
    /// T5 (SD3's `text_encoder_3`): `input_ids` → `last_hidden_state`.
    #[value(name = "text-encoder-3")]
    TextEncoder3,
    /// SD3's transformer: `hidden_states`, `encoder_hidden_states`, `pooled_projections`,
    /// `timestep` (σ·1000) → `sample` (the velocity).
    Transformer,
    /// A method's loss from predictions (`--method`, no `--model`).
    Loss,
    /// N full fine-tuning steps of the denoiser (UNet, SD3 transformer) on one fixed batch.
    TrainStep,
    /// Flow-GRPO's SDE sampler step with its log-probability (`--param noise_level=A`, no `--model`).
    SdeStep,
    /// GRPO's per-group advantages from `rewards` and `group` (no `--model`).
    Advantages,
}

#[derive(Args, Debug)]
pub struct ForwardArgs {
    pub component: Component,
    /// A diffusers pipeline folder (with unet/, vae/, ...), or an SDXL single file.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// With `--model FILE` of an architecture other than SDXL base: a diffusers folder of it
    /// (configs, tokenizers, scheduler; docs/cli.md).
    #[arg(long = "config", value_name = "DIR")]
    pub model_config: Option<PathBuf>,
    /// Input tensors (safetensors).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write the outputs (safetensors, f32).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// unet, transformer: a LoRA file (unet: peft or kohya keys; transformer: peft) folded in at alpha/rank.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Preference method (loss, train-step).
    #[arg(long, help = format!("Preference method (loss, train-step): {}", crate::losses::names().join(", ")))]
    pub method: Option<String>,
    /// Method parameter, e.g. `--param beta=5000` (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// train-step: adamw or sgd.
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    /// train-step: learning rate.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// train-step: AdamW weight decay (default 1e-2).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// train-step: global gradient-norm clipping threshold (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// train-step: number of steps on the fixed batch.
    #[arg(long, default_value_t = 1)]
    pub steps: usize,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Dev(dev) => run_dev(dev),
        Command::Generate(args) => generate::run(&args),
        Command::Bench(BenchCommand::TrainStep(b)) => {
            println!("{}", crate::bench::train_step(&b)?);
            Ok(())
        }
        Command::Bench(BenchCommand::Online(b)) => {
            println!("{}", crate::bench::online::run(&b)?);
            Ok(())
        }
        Command::Bench(BenchCommand::MaxBatch(b)) => {
            println!("{}", crate::bench::max_batch::run(&b)?);
            Ok(())
        }
        Command::Bench(BenchCommand::Score(b)) => {
            println!("{}", crate::bench::score::run(&b)?);
            Ok(())
        }
        Command::Bench(BenchCommand::Data(b)) => {
            println!("{}", crate::bench::data::run(&b)?);
            Ok(())
        }
        Command::Bench(BenchCommand::Generate { model, resolution, steps, device }) => {
            println!("{}", crate::bench::generate(&model, resolution, steps, &device.dtype, device.device.as_deref())?);
            Ok(())
        }
        Command::Train { file, config, mut overrides, resume, overwrite, keep } => {
            let config = file.or(config).expect("clap requires one");
            overrides.extend(keep.map(|k| format!("keep_checkpoints={k}")));
            let config = crate::train::config::TrainConfig::load(&config, &overrides)?;
            let start = crate::train::run::Start { resume, overwrite };
            let loss = match config.online {
                Some(_) => crate::online::run::train(&config, &start)?,
                None => crate::train::run::train(&config, &start)?,
            };
            println!("done: final loss {loss:.6}; outputs in {}", config.output_dir.display());
            Ok(())
        }
        Command::Experiment { file, config, overrides, device, dry_run, jobs, only } => {
            let file = file.or(config).expect("clap requires one");
            let options = crate::experiment::RunOptions { dry_run, jobs, only };
            crate::experiment::run(&file, &overrides, device.as_deref(), &options)
        }
        Command::Report { dirs, out } => {
            let out = match (out, dirs.as_slice()) {
                (Some(o), _) => o,
                (None, [one]) => one.clone(),
                (None, _) => anyhow::bail!("several folders given: say where the report goes with --out DIR"),
            };
            let runs = crate::experiment::report::collect(&dirs)?;
            crate::experiment::report::write(&out, &runs)?;
            println!("report: {}", out.join("report.md").display());
            Ok(())
        }
        Command::Cache(c) => crate::cli::cache::run(&c),
        Command::Lora(c) => crate::cli::lora::run(&c),
        Command::Score(s) => crate::cli::score::run(&s),
        Command::Eval(e) => crate::cli::eval::run(&e),
    }
}

fn run_dev(command: DevCommand) -> Result<()> {
    match command {
        DevCommand::Forward(args) => forward::run(&args),
        DevCommand::Params { model } => forward::params(&model),
        DevCommand::Tokenize { model, prompt, max_sequence_length } => {
            generate::tokenize(&model, &prompt, max_sequence_length)
        }
        DevCommand::MakePairs { model, pairs, size, seed, cache, shard_size, out } => {
            pairs::run(&model, pairs, &size, seed, &out, cache.then_some(shard_size))
        }
        DevCommand::RandomModel { component, config, out, dtype } => {
            forward::random_model(&component, &config, &out, &dtype)
        }
        DevCommand::Convert { component, model, out, to, config, dtype } => match (to, component) {
            (None, Some(c)) => forward::convert(&c, &model, &out, dtype.as_deref().unwrap_or("f32")),
            (None, None) => anyhow::bail!("convert: give a COMPONENT (unet or vae), or --to single-file|diffusers"),
            (Some(_), Some(c)) => anyhow::bail!("convert: --to converts the whole model; drop {c:?}"),
            (Some(to), None) => forward::convert_model(to, &model, config.as_deref(), &out, dtype.as_deref()),
        },
    }
}

/// What `mapo dev convert --to` writes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ConvertTarget {
    /// One .safetensors in Stability's layout (A1111, ComfyUI, diffusers' from_single_file).
    SingleFile,
    /// A diffusers pipeline folder.
    Diffusers,
}

/// The developer commands' names, accepted without `dev` (docs/design.md §2 and other tools call
/// `mapo forward ...`, `mapo tokenize ...`).
const DEV_COMMANDS: [&str; 6] = ["forward", "convert", "tokenize", "make-pairs", "random-model", "params"];

/// `mapo forward ...` → `mapo dev forward ...`.
pub fn with_dev(args: impl IntoIterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = args.into_iter().collect();
    if args.get(1).and_then(|a| a.to_str()).is_some_and(|a| DEV_COMMANDS.contains(&a)) {
        args.insert(1, "dev".into());
    }
    args
}
