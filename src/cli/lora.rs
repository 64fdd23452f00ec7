//! `mapo lora convert`: a LoRA file from one layout to the other (peft ↔ kohya).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use crate::models::folder::component_dir;
use crate::models::io::SafeTensorFiles;
use crate::models::lora::{BlockLayout, LoraFile, LoraFormat};
use crate::models::unet::UNet2DConditionModel;
use crate::models::unet::config::UNetConfig;
use crate::models::weights::Weights;

#[derive(Subcommand, Debug)]
pub enum LoraCommand {
    /// Convert a LoRA file between diffusers/PEFT keys (what `save_lora_weights` writes)
    /// and kohya keys (what sd-scripts writes, ComfyUI and A1111 load).
    Convert(ConvertArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Target {
    Kohya,
    Peft,
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The LoRA file (either format; detected from its keys).
    #[arg(long = "in")]
    pub input: PathBuf,
    #[arg(long)]
    pub to: Target,
    #[arg(long)]
    pub out: PathBuf,
    /// The model (pipeline or unet/ folder) the LoRA is for: kohya's block numbers depend
    /// on its layers per block. Default: SDXL's, or what the file records or implies.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

pub fn run(command: &LoraCommand) -> Result<()> {
    let LoraCommand::Convert(args) = command;
    let device = burn::tensor::Device::default();
    let peek = LoraFile::read(&args.input, &BlockLayout::uniform(0, 0), &device);
    if let Ok(lora) = &peek
        && lora.component == "transformer"
    {
        return convert_transformer(args, lora);
    }
    let layout = match &args.model {
        Some(model) => {
            let dir = component_dir(model, "unet")?;
            let (config, _) = crate::models::config::read_config(&dir)?;
            BlockLayout::of(&config)?
        }
        None => implied_layout(&args.input)?,
    };
    let lora = LoraFile::read(&args.input, &layout, &burn::tensor::Device::default())?;
    if let Some(model) = &args.model {
        // Each adapter must name a layer of this model, at its shape (read from the config).
        let dir = component_dir(model, "unet")?;
        let (config, _) = crate::models::config::read_config::<UNetConfig>(&dir)?;
        let w = Weights::shapes_only(&burn::tensor::Device::default());
        drop(UNet2DConditionModel::load(&config, &w)?);
        let shapes = w.requested().into_iter().collect();
        lora.check_layers(&shapes).with_context(|| format!("{} against {}", args.input.display(), dir.display()))?;
    }
    let to = match args.to {
        Target::Kohya => LoraFormat::Kohya,
        Target::Peft => LoraFormat::Peft,
    };
    lora.write(&args.out, to, &layout).with_context(|| format!("converting {}", args.input.display()))?;
    eprintln!(
        "{}: {} adapters, {} → {} ({})",
        args.out.display(),
        lora.adapters.len(),
        lora.format.name(),
        to.name(),
        if args.model.is_some() { "block layout from --model" } else { "block layout as implied" }
    );
    Ok(())
}

/// A transformer LoRA: PEFT ↔ kohya for FLUX (BFL's names, fused q/k/v and linear1). The
/// kohya layout exists for FLUX only: a PEFT file is written as kohya when `--model` is a
/// FLUX folder, or when its adapters reach the single-stream blocks that only FLUX has.
fn convert_transformer(args: &ConvertArgs, lora: &LoraFile) -> Result<()> {
    use crate::family::Family;
    let flux = match &args.model {
        Some(model) => {
            let family = Family::detect(model)?;
            let dir = component_dir(model, "transformer")?;
            let w = Weights::shapes_only(&burn::tensor::Device::default());
            match family {
                Family::Flux => drop(crate::models::flux::FluxTransformer2DModel::load(
                    &crate::models::config::read_config(&dir)?.0,
                    &w,
                )?),
                _ => drop(crate::models::sd3::SD3Transformer2DModel::load(
                    &crate::models::config::read_config(&dir)?.0,
                    &w,
                )?),
            }
            let shapes = w.requested().into_iter().collect();
            lora.check_layers(&shapes)
                .with_context(|| format!("{} against {}", args.input.display(), dir.display()))?;
            family == Family::Flux
        }
        None => {
            lora.format == LoraFormat::Kohya
                || lora.adapters.keys().any(|k| k.starts_with("single_transformer_blocks."))
        }
    };
    let to = match args.to {
        Target::Kohya => {
            anyhow::ensure!(
                flux,
                "{}: the kohya layout of a transformer LoRA is FLUX's (BFL layer names); give --model with the FLUX \
                 folder it is for (SD3 LoRAs are shared as PEFT files)",
                args.input.display()
            );
            LoraFormat::Kohya
        }
        Target::Peft => LoraFormat::Peft,
    };
    let none = BlockLayout::uniform(0, 0);
    lora.write(&args.out, to, &none).with_context(|| format!("converting {}", args.input.display()))?;
    eprintln!(
        "{}: {} transformer adapters, {} → {}",
        args.out.display(),
        lora.adapters.len(),
        lora.format.name(),
        to.name()
    );
    Ok(())
}

/// Without `--model`: SDXL's three blocks of two layers, unless a peft file's up-block
/// attention indices show another count (up blocks have one layer more than down
/// blocks). kohya files that mapo wrote record their layout, which the reader prefers.
fn implied_layout(path: &std::path::Path) -> Result<BlockLayout> {
    let files = SafeTensorFiles::open_file(path)?;
    let (mut up_layer, mut blocks) = (None::<usize>, 3usize);
    for name in files.names() {
        let name = name.strip_prefix("unet.").unwrap_or(name);
        let parts: Vec<&str> = name.split('.').collect();
        if let [block @ ("down_blocks" | "up_blocks"), i, kind, j, ..] = parts[..] {
            let (Ok(i), Ok(j)) = (i.parse::<usize>(), j.parse::<usize>()) else { continue };
            blocks = blocks.max(i + 1);
            if block == "up_blocks" && kind == "attentions" {
                up_layer = Some(up_layer.map_or(j, |m| m.max(j)));
            }
        }
    }
    let layers = match up_layer {
        Some(j) if j + 1 < 2 => 1,
        Some(j) => j,
        None => 2,
    };
    Ok(BlockLayout::uniform(layers, blocks))
}
