//! `mapo forward train-step`: N full fine-tuning steps of the UNet on one fixed batch, for
//! parity with a PyTorch step (docs/design.md §2).

use anyhow::{Result, bail};
use burn::tensor::{DType, TensorData};

use super::ForwardArgs;
use crate::device::select;
use crate::losses::{Params, build};
use crate::models::folder::component_dir;
use crate::models::io::{SafeTensorFiles, write_tensors};
use crate::models::named::for_each_param;
use crate::models::unet::UNet2DConditionModel;
use crate::objective::Objective;
use crate::train::optim::{Optimizer, OptimizerConfig};
use crate::train::step::{PairBatch, train_step};

pub fn run(args: &ForwardArgs) -> Result<()> {
    let Some(model) = args.model.as_deref() else { bail!("forward train-step needs --model DIR") };
    let Some(name) = args.method.as_deref() else {
        bail!("forward train-step needs --method ({})", crate::losses::names().join(", "))
    };
    // Master weights, optimizer state and the loss stay f32; `--dtype` sets the compute.
    let method = build(name, Params::parse(&args.params)?)?;
    let selected = select(args.device.device.as_deref())?;
    let compute = selected.precision(&args.device.dtype)?;
    let plain = selected.device;
    let device = plain.clone().autodiff();
    let dir = component_dir(model, "unet")?;

    let inputs = SafeTensorFiles::open_file(&args.inputs)?;
    let f4 = |n: &str| inputs.float::<4>(n, &device, DType::F32);
    let timesteps: Vec<i64> = inputs
        .int::<1>("timestep", &plain)?
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let batch = PairBatch {
        chosen: f4("chosen")?,
        rejected: Some(f4("rejected")?),
        labels: None,
        noise: f4("noise")?,
        timesteps,
        encoder_hidden_states: inputs.float::<3>("encoder_hidden_states", &device, DType::F32)?,
        text_embeds: inputs.float::<2>("text_embeds", &device, DType::F32)?,
        time_ids: inputs.float::<2>("time_ids", &device, DType::F32)?,
    };
    let b = batch.chosen.dims()[0];
    for (n, got) in
        [("rejected", f4("rejected")?.dims()[0]), ("noise", batch.noise.dims()[0]), ("timestep", batch.timesteps.len())]
    {
        if got != b {
            bail!("{}: {n} has {got} rows, chosen has {b}", args.inputs.display());
        }
    }
    let objective = Objective::sdxl();
    if let Some(t) = batch.timesteps.iter().find(|t| **t < 0 || **t as usize >= objective.num_train_timesteps()) {
        bail!("{}: timestep {t} is outside [0, 1000)", args.inputs.display());
    }

    let (mut unet, _) = UNet2DConditionModel::from_dir(&dir, &device, DType::F32)?;
    // Reference-free methods never build the reference.
    let reference =
        if method.uses_reference() { Some(UNet2DConditionModel::from_dir(&dir, &plain, DType::F32)?.0) } else { None };
    let mut optimizer = Optimizer::new(OptimizerConfig::parse(&args.optimizer, args.lr, args.weight_decay)?);
    let mut losses = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        let (next, stats) = train_step(
            unet,
            reference.as_ref(),
            &method,
            &batch,
            &objective,
            &mut optimizer,
            args.lr,
            args.max_grad_norm,
            compute,
        );
        unet = next;
        losses.push(stats.loss as f32);
    }

    let mut out = vec![("loss".to_string(), TensorData::new(losses.clone(), [losses.len()]))];
    for_each_param(&unet, |name, t, shape| {
        let values = t.inner().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data");
        out.push((name, TensorData::new(values, shape)));
    });
    write_tensors(&args.out, out)
}
