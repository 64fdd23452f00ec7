//! Data parallel: one rank per entry of `devices`, each with its own replica of the UNet
//! and of the optimizer state and its own slice of every global batch. Gradients are
//! averaged across ranks before the update, which every rank then applies identically (as
//! PyTorch DDP does), so N ranks × b pairs make the update of 1 rank × N·b pairs.
//!
//! The average is Burn's all-reduce (`burn::tensor::distributed`, NCCL on CUDA) when every
//! rank is a CUDA device. Burn has no all-reduce for the other backends (flex leaves it
//! unimplemented, wgpu has no device transport), so there the ranks run as threads of this
//! process and their gradients are summed on the first rank's device: the same logic,
//! testable on CPUs.

use anyhow::{Result, bail};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor};

use crate::device::{Backend, Selected, select};
use crate::models::unet::UNet2DConditionModel;
use crate::train::optim::{GradMap, Optimizer, to_autodiff};

/// How the ranks' gradients are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// One rank: nothing to reduce.
    Single,
    /// Ranks as threads; gradients summed on the first rank's device and sent back.
    FirstDevice,
    /// Burn's all-reduce (NCCL), every rank calling it from its own thread.
    Nccl,
}

impl Reduction {
    pub fn describe(self) -> &'static str {
        match self {
            Reduction::Single => "one rank, no reduction",
            Reduction::FirstDevice => {
                "ranks as threads of this process, gradients summed on the first device (the backend has no all-reduce)"
            }
            Reduction::Nccl => "Burn's all-reduce (NCCL)",
        }
    }
}

/// One rank's share of the run (`M`: the family's denoiser).
pub struct Rank<M = UNet2DConditionModel> {
    pub backend: Backend,
    /// The inner device (reference model, gradients, optimizer state).
    pub plain: Device,
    /// The autodiff device the policy trains on.
    pub device: Device,
    /// The policy (SDXL's UNet, SD3's transformer).
    pub unet: M,
    pub reference: Option<M>,
    pub optimizer: Optimizer,
}

/// The devices of a run: `devices` when given, else the single `device`.
pub fn select_devices(device: Option<&str>, devices: &[String]) -> Result<Vec<Selected>> {
    if devices.is_empty() {
        return Ok(vec![select(device)?]);
    }
    if let Some(d) = device
        && d != devices[0]
    {
        bail!("device = {d:?} and devices = {devices:?} disagree: set only devices (its first entry is rank 0)");
    }
    let mut out = Vec::new();
    for (i, name) in devices.iter().enumerate() {
        let s = select(Some(name)).map_err(|e| anyhow::anyhow!("devices[{i}] = {name:?}: {e:#}"))?;
        out.push(s);
    }
    Ok(out)
}

/// `MAPO_ALL_REDUCE=1` takes the all-reduce path with a single CUDA rank too (world size 1:
/// how the GPU script checks the NCCL path on one GPU).
pub fn reduction_for(backends: &[Backend]) -> Reduction {
    let forced = std::env::var_os("MAPO_ALL_REDUCE").is_some_and(|v| v == "1");
    let cuda = cfg!(feature = "cuda") && backends.iter().all(|b| *b == Backend::Cuda);
    match backends.len() {
        n if cuda && (n > 1 || forced) => Reduction::Nccl,
        1 => Reduction::Single,
        _ => Reduction::FirstDevice,
    }
}

/// A copy of `unet` on `device` (an autodiff device) with autodiff leaves of its own: two
/// ranks that shared leaf nodes would merge their graphs.
pub fn replicate<M: Module>(unet: &M, device: &Device) -> M {
    unet.clone().map(&mut Replicate { device: device.clone().inner() })
}

struct Replicate {
    device: Device,
}

impl ModuleMapper for Replicate {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let (grad, strategy) = (tensor.is_require_grad(), tensor.gradient_checkpointing_strategy());
        let moved = to_autodiff(tensor.inner().to_device(&self.device), strategy);
        Param::from_mapped_value(id, if grad { moved.require_grad() } else { moved }, mapper)
    }
}

/// The optimizer's state copied onto another rank's device.
pub fn replicate_optimizer(optimizer: &Optimizer, device: &Device) -> Optimizer {
    let mut copy = Optimizer::new(optimizer.config);
    copy.step = optimizer.step;
    copy.moments = optimizer
        .moments
        .iter()
        .map(|(k, (m, v))| (k.clone(), (m.clone().to_device(device), v.clone().to_device(device))))
        .collect();
    copy
}

/// Runs `f` for every rank, in parallel threads when there are several.
pub fn each_rank<T: Send, M: Send>(ranks: &mut [Rank<M>], f: impl Fn(usize, &mut Rank<M>) -> T + Sync) -> Vec<T> {
    if ranks.len() == 1 {
        return vec![f(0, &mut ranks[0])];
    }
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = ranks.iter_mut().enumerate().map(|(i, r)| s.spawn(move || f(i, r))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    })
}

/// Every rank's gradients replaced by the mean over ranks (on the rank's own device).
pub fn average<M: Send>(ranks: &mut [Rank<M>], grads: Vec<GradMap>, reduction: Reduction) -> Vec<GradMap> {
    match reduction {
        Reduction::Single => grads,
        Reduction::FirstDevice => {
            let n = grads.len() as f64;
            let first = ranks[0].plain.clone();
            let mut sum = GradMap::new();
            for g in grads {
                for (name, t) in g {
                    let t = t.to_device(&first);
                    let total = match sum.remove(&name) {
                        Some(acc) => acc + t,
                        None => t,
                    };
                    sum.insert(name, total);
                }
            }
            let mean: GradMap = sum.into_iter().map(|(k, t)| (k, t.div_scalar(n))).collect();
            ranks
                .iter()
                .map(|r| mean.iter().map(|(k, t)| (k.clone(), t.clone().to_device(&r.plain))).collect())
                .collect()
        }
        Reduction::Nccl => nccl_mean(ranks, grads),
    }
}

#[cfg(feature = "cuda")]
fn nccl_mean<M: Send>(ranks: &mut [Rank<M>], grads: Vec<GradMap>) -> Vec<GradMap> {
    use burn::tensor::distributed::{ReduceOperation, all_reduce};
    let devices: Vec<Device> = ranks.iter().map(|r| r.plain.clone()).collect();
    let slots: Vec<std::sync::Mutex<Option<GradMap>>> = grads.into_iter().map(|g| Some(g).into()).collect();
    // NCCL's collectives block until every rank has called them: one thread per rank.
    each_rank(ranks, |i, _| {
        let g = slots[i].lock().expect("not poisoned").take().expect("each rank takes its own");
        let pending: Vec<_> =
            g.into_iter().map(|(k, t)| (k, all_reduce(t, ReduceOperation::Mean, devices.clone()))).collect();
        pending.into_iter().map(|(k, c)| (k, c.resolve())).collect()
    })
}

#[cfg(not(feature = "cuda"))]
fn nccl_mean<M: Send>(_ranks: &mut [Rank<M>], _grads: Vec<GradMap>) -> Vec<GradMap> {
    unreachable!("NCCL is chosen only for CUDA builds")
}

/// Keeps Burn's communication server up while NCCL ranks train (its drop tears it down).
pub struct Communication(#[allow(dead_code)] Option<Box<dyn std::any::Any>>);

pub fn start_communication<M>(ranks: &[Rank<M>], reduction: Reduction) -> Communication {
    #[cfg(feature = "cuda")]
    if reduction == Reduction::Nccl {
        use burn::tensor::distributed::{DistributedConfig, DistributedContext, ReduceOperation};
        let devices = ranks.iter().map(|r| r.plain.clone()).collect();
        let ctx = DistributedContext::init(devices, DistributedConfig { all_reduce_op: ReduceOperation::Mean });
        return Communication(Some(Box::new(ctx)));
    }
    let _ = (ranks, reduction);
    Communication(None)
}
