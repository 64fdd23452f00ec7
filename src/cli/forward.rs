//! `mapo forward`: one component on tensors from a file, for parity checks by other tools.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, Tensor};

use super::{Component, ForwardArgs};
use crate::device::{Precision, select};
use crate::losses::{LossInput, Params, build, loss_dtype, names};
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::folder::component_dir;
use crate::models::folder::{save_as, save_component};
use crate::models::io::{SafeTensorFiles, write_tensors};
use crate::models::lora::BlockLayout;
use crate::models::unet::{TextTime, UNet2DConditionModel};
use crate::models::vae::AutoencoderKL;
use crate::models::weights::Weights;

pub fn run(args: &ForwardArgs) -> Result<()> {
    crate::models::folder::set_single_file_configs(args.model_config.as_deref());
    match args.component {
        Component::Loss => return loss(args),
        Component::TrainStep => return super::train_step::run(args),
        Component::SdeStep => return super::online::sde_step(args),
        Component::Advantages => return super::online::advantages(args),
        _ => {}
    }
    let Some(model) = args.model.as_deref() else { bail!("forward {:?} needs --model DIR", args.component) };
    if args.component == Component::Transformer {
        return transformer(model, args);
    }
    if args.lora.is_some() && args.component != Component::Unet {
        bail!("--lora applies to the denoiser only (forward unet, forward transformer), not to {:?}", args.component);
    }
    let selected = select(args.device.device.as_deref())?;
    let dtype = selected.precision(&args.device.dtype)?;
    let device = &selected.device;
    let inputs = SafeTensorFiles::open_file(&args.inputs)?;
    check_inputs(model, args.component, &inputs).with_context(|| format!("{}", args.inputs.display()))?;
    let f = |name: &str| -> Result<Tensor<4>> { inputs.float::<4>(name, device, dtype) };
    let outputs: Vec<(&str, Tensor<4>)> = match args.component {
        Component::Unet => {
            let dir = component_dir(model, "unet")?;
            let (mut unet, config) = UNet2DConditionModel::from_dir(&dir, device, dtype)?;
            if let Some(lora) = &args.lora {
                unet = crate::models::lora::apply_lora_file(unet, lora, &BlockLayout::of(&config)?)?;
            }
            let sample = f("sample")?;
            let timestep = inputs.int::<1>("timestep", device)?;
            let context = inputs.float::<3>("encoder_hidden_states", device, dtype)?;
            let cond = if unet.add_embedding.is_some() {
                Some(TextTime {
                    text_embeds: inputs.float::<2>("text_embeds", device, dtype)?,
                    time_ids: inputs.float::<2>("time_ids", device, DType::F32)?,
                })
            } else {
                None
            };
            vec![("sample", unet.forward(sample, timestep, context, cond.as_ref()))]
        }
        Component::VaeEncode => {
            let (vae, _) = AutoencoderKL::from_dir(&component_dir(model, "vae")?, device, dtype)?;
            let (mean, logvar) = vae.encode(f("sample")?);
            vec![("mean", mean), ("logvar", logvar)]
        }
        Component::VaeDecode => {
            let (vae, _) = AutoencoderKL::from_dir(&component_dir(model, "vae")?, device, dtype)?;
            vec![("sample", vae.decode(f("latents")?))]
        }
        Component::TextEncoder | Component::TextEncoder2 | Component::TextEncoder3 => {
            let (sub, second) = text_folder(args.component);
            let dir = component_dir(model, sub)?;
            if is_t5(&dir)? {
                let (t5, _) = crate::models::t5::T5EncoderModel::from_dir(&dir, device, dtype)?;
                let out = t5.forward(inputs.int::<2>("input_ids", device)?);
                return write_tensors(&args.out, vec![("last_hidden_state".into(), out.cast(DType::F32).into_data())]);
            }
            // The folder's class decides (SD3's first CLIP has a projection, FLUX's has
            // not); SDXL's folders may not say it: then the second is bigG with its projection.
            let (config, _) = crate::models::config::read_config::<ClipTextConfig>(&dir)?;
            let projection = config.declares_projection().unwrap_or(second);
            let (enc, _) = ClipTextModel::from_dir(&dir, device, dtype, projection)?;
            let out = enc.forward(inputs.int::<2>("input_ids", device)?);
            let f32_data = |t: Tensor<3>| t.cast(DType::F32).into_data();
            let mut data = vec![("hidden_states".to_string(), f32_data(out.penultimate))];
            match out.text_embeds {
                Some(e) => data.push(("text_embeds".into(), e.cast(DType::F32).into_data())),
                None => {
                    data.push(("last_hidden_state".into(), f32_data(out.last_hidden_state)));
                    data.push(("pooler_output".into(), out.pooled.cast(DType::F32).into_data()));
                }
            }
            return write_tensors(&args.out, data);
        }
        Component::Loss
        | Component::TrainStep
        | Component::Transformer
        | Component::SdeStep
        | Component::Advantages => {
            unreachable!("handled above")
        }
    };
    let data = outputs.into_iter().map(|(n, t)| (n.to_string(), t.cast(DType::F32).into_data())).collect();
    write_tensors(&args.out, data)
}

/// Every input of `component` against its config (shapes, id ranges, finite values), before
/// any weight is loaded or any op runs.
fn check_inputs(model: &Path, component: Component, inputs: &SafeTensorFiles) -> Result<()> {
    use crate::models::inputs::*;
    use crate::models::{clip::ClipTextConfig, config::read_config, vae::VaeConfig};
    let need = |n: &str| inputs.get(n).with_context(|| format!("input tensor {n:?} is missing"));
    let floats = |n: &str| -> Result<Vec<f32>> {
        let view = need(n)?;
        let data = view.to_data().with_context(|| format!("input {n:?}"))?.convert::<f32>();
        data.try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{n}: {e:?}"))
    };
    match component {
        Component::Unet => {
            check_unet_inputs(&component_dir(model, "unet")?, inputs)?;
            for n in ["sample", "encoder_hidden_states", "text_embeds", "time_ids"] {
                if inputs.get(n).is_some() {
                    check_finite(n, &floats(n)?)?;
                }
            }
        }
        Component::VaeEncode | Component::VaeDecode => {
            let (config, _) = read_config::<VaeConfig>(&component_dir(model, "vae")?)?;
            let name = if component == Component::VaeEncode { "sample" } else { "latents" };
            let shape = need(name)?.shape;
            match component {
                Component::VaeEncode => check_vae_images(&config, &shape)?,
                _ => check_vae_latents(&config, &shape)?,
            }
            check_finite(name, &floats(name)?)?;
        }
        Component::TextEncoder | Component::TextEncoder2 | Component::TextEncoder3 => {
            let dir = component_dir(model, text_folder(component).0)?;
            let view = need("input_ids")?;
            if !matches!(view.dtype, safetensors::Dtype::I64 | safetensors::Dtype::I32) {
                bail!("input_ids: stored as {:?}; token ids must be i64 (or i32)", view.dtype);
            }
            let ids = view
                .to_data_any()?
                .convert::<i64>()
                .try_into_vec::<i64>()
                .map_err(|e| anyhow::anyhow!("input_ids: {e:?}"))?;
            if is_t5(&dir)? {
                let (config, _) = read_config::<crate::models::t5::T5Config>(&dir)?;
                expect_shape("input_ids", &view.shape, &[None, None])?;
                if let Some((i, id)) =
                    ids.iter().enumerate().find(|(_, id)| **id < 0 || **id >= config.vocab_size as i64)
                {
                    bail!("input_ids: id {id} at position {i} is outside the vocabulary [0, {})", config.vocab_size);
                }
            } else {
                let (config, _) = read_config::<ClipTextConfig>(&dir)?;
                check_token_ids(&config, &view.shape, &ids)?;
            }
        }
        Component::Transformer => {
            let dir = component_dir(model, "transformer")?;
            let mut names = vec!["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"];
            if crate::family::Family::detect(model)? == crate::family::Family::Flux {
                let (config, _) = read_config::<crate::models::flux::FluxTransformerConfig>(&dir)?;
                check_flux_inputs(&config, &|n| inputs.get(n).map(|v| v.shape.clone()))?;
                names.extend(["img_ids", "txt_ids"]);
                if config.guidance_embeds {
                    names.push("guidance");
                }
            } else {
                let (config, _) = read_config::<crate::models::sd3::SD3TransformerConfig>(&dir)?;
                check_sd3_inputs(&config, &|n| Ok(need(n)?.shape.clone()))?;
            }
            for n in names {
                check_finite(n, &floats(n)?)?;
            }
        }
        Component::Loss | Component::TrainStep | Component::SdeStep | Component::Advantages => {}
    }
    Ok(())
}

/// `forward transformer`: the family's transformer on diffusers' forward inputs.
fn transformer(model: &Path, args: &ForwardArgs) -> Result<()> {
    use crate::family::Family;
    let family = Family::detect(model)?;
    if family == Family::Sdxl {
        bail!(
            "{}: forward transformer runs SD3 and FLUX transformers; this is an SDXL folder (forward unet)",
            model.display()
        )
    }
    let selected = select(args.device.device.as_deref())?;
    let dtype = selected.precision(&args.device.dtype)?;
    let device = &selected.device;
    let inputs = SafeTensorFiles::open_file(&args.inputs)?;
    check_inputs(model, Component::Transformer, &inputs).with_context(|| format!("{}", args.inputs.display()))?;
    let dir = component_dir(model, "transformer")?;
    if family == Family::Flux {
        return flux_transformer(&dir, args, &inputs, device, dtype);
    }
    let (mut net, _) = crate::models::sd3::SD3Transformer2DModel::from_dir(&dir, device, dtype)?;
    if let Some(lora) = &args.lora {
        net = crate::models::lora::apply_transformer_lora_file(net, lora)?;
    }
    let sample = net.forward(
        inputs.float::<4>("hidden_states", device, dtype)?,
        inputs.float::<1>("timestep", device, DType::F32)?,
        inputs.float::<3>("encoder_hidden_states", device, dtype)?,
        inputs.float::<2>("pooled_projections", device, dtype)?,
    );
    write_tensors(&args.out, vec![("sample".into(), sample.cast(DType::F32).into_data())])
}

/// The folder a text-encoder component reads, and whether it is the second one.
fn text_folder(component: Component) -> (&'static str, bool) {
    match component {
        Component::TextEncoder2 => ("text_encoder_2", true),
        Component::TextEncoder3 => ("text_encoder_3", false),
        _ => ("text_encoder", false),
    }
}

/// Whether a text-encoder folder holds T5 (SD3's third encoder, FLUX's second): its
/// config's `model_type` or `architectures` say so.
fn is_t5(dir: &Path) -> Result<bool> {
    let (raw, _) = crate::models::config::read_config::<serde_json::Value>(dir)?;
    Ok(crate::models::t5::config::is_t5(&raw))
}

/// Whether a denoiser config is FLUX's (`_class_name`).
fn is_flux(config: &serde_json::Value) -> bool {
    config["_class_name"].as_str() == Some("FluxTransformer2DModel")
}

/// `forward transformer` on a FLUX folder: packed tokens, σ, explicit ids (inputs checked).
fn flux_transformer(
    dir: &Path,
    args: &ForwardArgs,
    inputs: &SafeTensorFiles,
    device: &Device,
    dtype: DType,
) -> Result<()> {
    let (mut net, _) = crate::models::flux::FluxTransformer2DModel::from_dir(dir, device, dtype)?;
    if let Some(lora) = &args.lora {
        net = crate::models::lora::apply_transformer_lora_file(net, lora)?;
    }
    let ids = |n: &str| -> Result<Vec<f32>> {
        let t = inputs.float::<2>(n, device, DType::F32)?;
        t.into_data().convert::<f32>().try_into_vec::<f32>().map_err(|e| anyhow::anyhow!("{n}: {e:?}"))
    };
    let guidance = match net.guidance_embeds() {
        true => Some(inputs.float::<1>("guidance", device, DType::F32)?),
        false => None,
    };
    let sample = net.forward(
        inputs.float::<3>("hidden_states", device, dtype)?,
        inputs.float::<1>("timestep", device, DType::F32)?,
        inputs.float::<3>("encoder_hidden_states", device, dtype)?,
        inputs.float::<2>("pooled_projections", device, dtype)?,
        &ids("img_ids")?,
        &ids("txt_ids")?,
        guidance,
    );
    write_tensors(&args.out, vec![("sample".into(), sample.cast(DType::F32).into_data())])
}

/// The UNet inputs' shapes and timesteps against the UNet's config, before anything runs.
fn check_unet_inputs(dir: &Path, inputs: &SafeTensorFiles) -> Result<()> {
    use crate::models::unet::inputs::{InputShapes, check_shapes, check_timesteps};
    let (config, _) = crate::models::config::read_config::<crate::models::unet::config::UNetConfig>(dir)?;
    let shape = |n: &str| inputs.get(n).map(|v| v.shape.clone());
    let need = |n: &str| shape(n).with_context(|| format!("input tensor {n:?} is missing"));
    let (sample, timestep, context) = (need("sample")?, need("timestep")?, need("encoder_hidden_states")?);
    let (text_embeds, time_ids) = (shape("text_embeds"), shape("time_ids"));
    check_shapes(
        &config,
        &InputShapes {
            sample: &sample,
            timestep: &timestep,
            encoder_hidden_states: &context,
            text_embeds: text_embeds.as_deref(),
            time_ids: time_ids.as_deref(),
        },
    )?;
    let t = inputs.get("timestep").expect("checked").to_data_any()?.convert::<f64>();
    check_timesteps(&t.try_to_vec::<f64>().map_err(|e| anyhow::anyhow!("timestep: {e:?}"))?)
}

/// Parameter counts from the configs alone (the weights are not read: the real UNet would
/// otherwise be loaded, 10 GB, just to be counted).
pub fn params(model: &Path) -> Result<()> {
    let w = Weights::shapes_only(&Device::default());
    for name in ["unet", "transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"] {
        let Ok(dir) = component_dir(model, name) else { continue };
        let (raw, _) = crate::models::config::read_config::<serde_json::Value>(&dir)?;
        let before = w.requested().len();
        match name {
            "unet" => drop(UNet2DConditionModel::load(&serde_json::from_value(raw)?, &w)?),
            "vae" => drop(AutoencoderKL::load(&serde_json::from_value(raw)?, &w)?),
            "transformer" if is_flux(&raw) => {
                drop(crate::models::flux::FluxTransformer2DModel::load(&serde_json::from_value(raw)?, &w)?)
            }
            "transformer" => drop(crate::models::sd3::SD3Transformer2DModel::load(&serde_json::from_value(raw)?, &w)?),
            _ if is_t5(&dir)? => drop(crate::models::t5::T5EncoderModel::load(&serde_json::from_value(raw)?, &w)?),
            _ => {
                let config: ClipTextConfig = serde_json::from_value(raw)?;
                let projection = config.declares_projection().unwrap_or(name == "text_encoder_2");
                drop(ClipTextModel::load(&config, &w, projection)?)
            }
        }
        let count: usize = w.requested()[before..].iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        println!("{name}: {count} parameters");
    }
    Ok(())
}

pub fn convert(component: &str, model: &Path, out: &Path, dtype: &str) -> Result<()> {
    let dtype = dtype.parse::<Precision>()?.dtype();
    let device = Device::default();
    let dir = component_dir(model, component)?;
    let (_, raw) = crate::models::config::read_config::<serde_json::Value>(&dir)?;
    match component {
        "unet" => save_component(&UNet2DConditionModel::from_dir(&dir, &device, DType::F32)?.0, &raw, out, dtype),
        "vae" => save_component(&AutoencoderKL::from_dir(&dir, &device, DType::F32)?.0, &raw, out, dtype),
        other => bail!("cannot convert component {other:?}: expected unet or vae"),
    }?;
    println!("wrote {}", out.display());
    Ok(())
}

/// `dev convert --to`: a whole SDXL model between a diffusers folder and a single file.
pub fn convert_model(
    to: super::ConvertTarget,
    model: &Path,
    config: Option<&Path>,
    out: &Path,
    dtype: Option<&str>,
) -> Result<()> {
    use crate::models::single_file::convert::{to_diffusers, to_single_file};
    let dtype = dtype.map(|d| d.parse::<Precision>().map(|p| p.dtype())).transpose()?;
    let report = match to {
        super::ConvertTarget::SingleFile => {
            if config.is_some() {
                bail!("--config is for --to diffusers (the folder already has its configs)");
            }
            to_single_file(model, out, dtype.unwrap_or(DType::F32))?
        }
        super::ConvertTarget::Diffusers => match config {
            Some(config) => to_diffusers(model, config, out, dtype)?,
            // The built-in SDXL base configs, tokenizers and scheduler, when the file fits them.
            None => to_diffusers(model, &crate::models::single_file::builtin::folder_for(model)?, out, dtype)?,
        },
    };
    for line in report {
        eprintln!("{line}");
    }
    println!("wrote {}", out.display());
    Ok(())
}

pub fn random_model(component: &str, config: &Path, out: &Path, dtype: &str) -> Result<()> {
    let dtype = dtype.parse::<Precision>()?.dtype();
    let device = Device::default();
    let text = std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", config.display()))?;
    // Built directly in the storage dtype so a 2.6B-parameter UNet needs 5 GB, not 10.
    let w = Weights::random(&device, dtype);
    match component {
        "unet" => {
            save_component(&UNet2DConditionModel::load(&serde_json::from_value(raw.clone())?, &w)?, &raw, out, dtype)
        }
        "vae" => save_component(&AutoencoderKL::load(&serde_json::from_value(raw.clone())?, &w)?, &raw, out, dtype),
        // Text encoders: transformers' file name, keys with the `text_model.` prefix.
        "text_encoder" | "text_encoder_2" => {
            let model = ClipTextModel::load(&serde_json::from_value(raw.clone())?, &w, component == "text_encoder_2")?;
            let key = |n: String| if n.starts_with("text_projection") { n } else { format!("text_model.{n}") };
            save_as(&model, &raw, &out.join("model.safetensors"), dtype, key)
        }
        "transformer" if is_flux(&raw) => save_component(
            &crate::models::flux::FluxTransformer2DModel::load(&serde_json::from_value(raw.clone())?, &w)?,
            &raw,
            out,
            dtype,
        ),
        // The position table is computed on load; it is not written.
        "transformer" => save_component(
            &crate::models::sd3::SD3Transformer2DModel::load(&serde_json::from_value(raw.clone())?, &w)?,
            &raw,
            out,
            dtype,
        ),
        other => bail!("unknown component {other:?}: expected unet, vae, text_encoder, text_encoder_2 or transformer"),
    }?;
    println!("wrote {}", out.display());
    Ok(())
}

/// `mapo forward loss`: predictions and targets laid out `[chosen; rejected]`, optional
/// `timestep` [2B] (i64) per row.
fn loss(args: &ForwardArgs) -> Result<()> {
    let Some(name) = args.method.as_deref() else { bail!("forward loss needs --method ({})", names().join(", ")) };
    if super::online::LOSSES.contains(&name) {
        return super::online::loss(name, args);
    }
    let method = build(name, Params::parse(&args.params)?)?;
    let device = select(args.device.device.as_deref())?.device;
    let inputs = SafeTensorFiles::open_file(&args.inputs)?;
    let read = |n: &str| inputs.float::<4>(n, &device, DType::F32);
    let (pred, target) = (read("model_pred")?, read("target")?);
    if pred.dims() != target.dims() {
        bail!("{}: model_pred {:?} and target {:?} differ in shape", args.inputs.display(), pred.dims(), target.dims());
    }
    let rows = pred.dims()[0];
    if rows == 0 {
        bail!("{}: model_pred has no rows; a loss needs at least one pair (chosen, rejected)", args.inputs.display());
    }
    if rows % 2 != 0 {
        bail!("{}: model_pred has {rows} rows; expected 2B (chosen rows, then rejected)", args.inputs.display());
    }
    let reference = if method.uses_reference() {
        let r = read("ref_pred").with_context(|| format!("method {name} needs ref_pred"))?;
        if r.dims() != pred.dims() {
            bail!(
                "{}: ref_pred {:?} differs from model_pred {:?} in shape",
                args.inputs.display(),
                r.dims(),
                pred.dims()
            );
        }
        Some(r)
    } else {
        None
    };
    let timesteps = match inputs.get("timestep") {
        Some(_) => {
            let t = inputs.int::<1>("timestep", &device)?;
            let t: Vec<i64> =
                t.into_data().convert::<i64>().try_to_vec::<i64>().map_err(|e| anyhow::anyhow!("timestep: {e:?}"))?;
            if t.len() != rows {
                bail!("{}: timestep has {} entries; expected one per row ({rows})", args.inputs.display(), t.len());
            }
            t
        }
        None => vec![0; rows],
    };
    let dtype = loss_dtype(&device);
    let input = LossInput::from_pair_rows(pred, target, reference, method.needs, timesteps, dtype);
    let out = method.compute(&input);
    let mut data = vec![("loss".to_string(), out.loss.into_data())];
    data.extend(out.metrics.into_iter().map(|(k, v)| (k.to_string(), v.into_data())));
    write_tensors(&args.out, data)
}
