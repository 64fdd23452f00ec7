//! `mapo forward train-step`: N full fine-tuning steps of the denoiser on one fixed batch,
//! for parity with a PyTorch step (docs/design.md §2; flow families §2b: σ per pair instead
//! of a DDPM timestep, `pooled_projections` instead of `text_embeds` + `time_ids`).

use anyhow::{Result, bail};
use burn::tensor::{DType, Device, TensorData};

use super::ForwardArgs;
use crate::device::select;
use crate::family::{Family, TrainDenoiser};
use crate::losses::{Method, Params, build};
use crate::models::flux::FluxTransformer2DModel;
use crate::models::folder::component_dir;
use crate::models::io::{SafeTensorFiles, write_tensors};
use crate::models::named::for_each_param;
use crate::models::sd3::SD3Transformer2DModel;
use crate::models::unet::UNet2DConditionModel;
use crate::objective::{FlowMatching, Objective};
use crate::train::optim::{Optimizer, OptimizerConfig};
use crate::train::step::{PairBatch, train_step};

pub fn run(args: &ForwardArgs) -> Result<()> {
    let Some(model) = args.model.as_deref() else { bail!("forward train-step needs --model DIR") };
    let Some(name) = args.method.as_deref() else {
        bail!("forward train-step needs --method ({})", crate::losses::names().join(", "))
    };
    // Master weights, optimizer state and the loss stay f32; `--dtype` sets the compute.
    let family = Family::detect(model)?;
    let params = crate::train::setup::method_params(name, family.objective(), Params::parse(&args.params)?);
    let method = build(name, params)?;
    let selected = select(args.device.device.as_deref())?;
    let compute = selected.precision(&args.device.dtype)?;
    let plain = selected.device;
    let device = plain.clone().autodiff();
    let dir = component_dir(model, family.denoiser_folder())?;

    let inputs = SafeTensorFiles::open_file(&args.inputs)?;
    let f4 = |n: &str| inputs.float::<4>(n, &device, DType::F32);
    let flow = family.objective() == crate::objective::ObjectiveName::Flow;
    let (timesteps, objective, pooled, time_ids) = if flow {
        let sigmas = floats(&inputs, "sigma")?;
        let objective = Objective::Flow(
            FlowMatching::at_sigmas(sigmas.clone())
                .map_err(|e| anyhow::anyhow!("{}: sigma: {e}", args.inputs.display()))?,
        );
        let pooled = inputs.float::<2>("pooled_projections", &device, DType::F32)?;
        ((0..sigmas.len() as i64).collect(), objective, pooled, None)
    } else {
        let timesteps: Vec<i64> = inputs
            .int::<1>("timestep", &plain)?
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let objective = Objective::sdxl();
        if let Some(t) = timesteps.iter().find(|t| **t < 0 || **t as usize >= objective.num_train_timesteps()) {
            bail!("{}: timestep {t} is outside [0, 1000)", args.inputs.display());
        }
        let pooled = inputs.float::<2>("text_embeds", &device, DType::F32)?;
        (timesteps, objective, pooled, Some(inputs.float::<2>("time_ids", &device, DType::F32)?))
    };
    let batch = PairBatch {
        chosen: f4("chosen")?,
        rejected: Some(f4("rejected")?),
        labels: None,
        noise: f4("noise")?,
        timesteps,
        encoder_hidden_states: inputs.float::<3>("encoder_hidden_states", &device, DType::F32)?,
        text_embeds: pooled,
        time_ids,
        guidance: match inputs.get("guidance") {
            Some(_) => Some(inputs.float::<1>("guidance", &device, DType::F32)?),
            None => None,
        },
    };
    let b = batch.chosen.dims()[0];
    let time_name = if flow { "sigma" } else { "timestep" };
    for (n, got) in
        [("rejected", f4("rejected")?.dims()[0]), ("noise", batch.noise.dims()[0]), (time_name, batch.timesteps.len())]
    {
        if got != b {
            bail!("{}: {n} has {got} rows, chosen has {b}", args.inputs.display());
        }
    }

    let run = Run { args, method: &method, batch: &batch, objective: &objective, compute };
    match family {
        Family::Sdxl => {
            let load = |d: &Device| UNet2DConditionModel::from_dir(&dir, d, DType::F32).map(|m| m.0);
            run.steps(load(&device)?, method.uses_reference().then(|| load(&plain)).transpose()?)
        }
        Family::Sd3 => {
            let load = |d: &Device| SD3Transformer2DModel::from_dir(&dir, d, DType::F32).map(|m| m.0);
            let model = load(&device)?;
            let [_, _, h, w] = batch.chosen.dims();
            model.check_latents(h, w).map_err(|e| anyhow::anyhow!("{}: chosen: {e}", args.inputs.display()))?;
            run.steps(model, method.uses_reference().then(|| load(&plain)).transpose()?)
        }
        Family::Flux => {
            let load = |d: &Device| FluxTransformer2DModel::from_dir(&dir, d, DType::F32).map(|m| m.0);
            let model = load(&device)?;
            let [_, c, h, w] = batch.chosen.dims();
            let e = |what: String| anyhow::anyhow!("{}: {what}", args.inputs.display());
            crate::models::flux::pack::check_latents("chosen", h, w).map_err(|x| e(x.to_string()))?;
            if c != model.latent_channels() {
                return Err(e(format!(
                    "chosen: {c} latent channels, the transformer takes {}",
                    model.latent_channels()
                )));
            }
            match (&batch.guidance, model.guidance_embeds()) {
                (None, true) => {
                    return Err(e("guidance: missing; this transformer embeds a guidance scale [B]".into()));
                }
                (Some(g), _) if g.dims()[0] != b => {
                    return Err(e(format!("guidance has {} rows, chosen has {b}", g.dims()[0])));
                }
                _ => {}
            }
            run.steps(model, method.uses_reference().then(|| load(&plain)).transpose()?)
        }
    }
}

fn floats(inputs: &SafeTensorFiles, name: &str) -> Result<Vec<f32>> {
    let view = inputs.get(name).ok_or_else(|| anyhow::anyhow!("input tensor {name:?} is missing"))?;
    anyhow::ensure!(view.shape.len() == 1, "{name}: shape {:?}, expected [B]", view.shape);
    view.to_data_any()?.convert::<f32>().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{name}: {e:?}"))
}

struct Run<'a> {
    args: &'a ForwardArgs,
    method: &'a Method,
    batch: &'a PairBatch,
    objective: &'a Objective,
    compute: DType,
}

impl Run<'_> {
    /// The steps on `model` (reference-free methods never build `reference`), then the
    /// losses and every parameter under its diffusers name to `--out`.
    fn steps<M: TrainDenoiser>(&self, mut model: M, reference: Option<M>) -> Result<()> {
        let args = self.args;
        let mut optimizer = Optimizer::new(OptimizerConfig::parse(&args.optimizer, args.lr, args.weight_decay)?);
        let mut losses = Vec::with_capacity(args.steps);
        for _ in 0..args.steps {
            let (next, stats) = train_step(
                model,
                reference.as_ref(),
                self.method,
                self.batch,
                self.objective,
                &mut optimizer,
                args.lr,
                args.max_grad_norm,
                self.compute,
            );
            model = next;
            losses.push(stats.loss as f32);
        }
        let mut out = vec![("loss".to_string(), TensorData::new(losses.clone(), [losses.len()]))];
        for_each_param(&model, |name, t, shape| {
            if crate::models::sd3::BUFFERS.contains(&name.as_str()) {
                return;
            }
            let values = t.inner().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data");
            out.push((name, TensorData::new(values, shape)));
        });
        write_tensors(&args.out, out)
    }
}
