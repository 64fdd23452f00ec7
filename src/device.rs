//! Backend and float-precision selection.
//!
//! The backend is a runtime choice (`--device` / `MAPO_DEVICE`) among those compiled in
//! through cargo features; model code never names a backend.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use burn::tensor::{DType, Device, FloatDType, Tensor};

/// A backend that `--device` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Cuda,
    Wgpu,
    Vulkan,
    /// CubeCL's CPU backend (feature `cpu`).
    Cpu,
    /// Burn's pure-Rust CPU backend (feature `flex`, the default).
    Flex,
}

impl Backend {
    pub const ALL: [Backend; 5] = [Backend::Cuda, Backend::Vulkan, Backend::Wgpu, Backend::Cpu, Backend::Flex];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Cuda => "cuda",
            Backend::Wgpu => "wgpu",
            Backend::Vulkan => "vulkan",
            Backend::Cpu => "cpu",
            Backend::Flex => "flex",
        }
    }

    /// The cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            Backend::Vulkan => "vulkan",
            other => other.name(),
        }
    }

    pub fn compiled_in(self) -> bool {
        match self {
            Backend::Cuda => cfg!(feature = "cuda"),
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Vulkan => cfg!(feature = "vulkan"),
            Backend::Cpu => cfg!(feature = "cpu"),
            Backend::Flex => cfg!(feature = "flex"),
        }
    }

    /// The device `--device NAME` means (`Adapter::Default`), or, when no device was asked
    /// for, a real GPU only (`Discrete`, then `Integrated`): wgpu's default adapter may be a
    /// software one (lavapipe), which must not shadow the native CPU backend.
    fn construct(self, adapter: Adapter, index: usize) -> Device {
        #[cfg(feature = "wgpu")]
        let kind = match (adapter, index) {
            (Adapter::Default, 0) => burn::tensor::DeviceKind::DefaultDevice,
            (Adapter::Default | Adapter::Discrete, i) => burn::tensor::DeviceKind::DiscreteGpu(i),
            (Adapter::Integrated, i) => burn::tensor::DeviceKind::IntegratedGpu(i),
        };
        let _ = (adapter, index);
        match self {
            #[cfg(feature = "cuda")]
            Backend::Cuda => Device::cuda(index),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Device::wgpu(kind),
            #[cfg(feature = "vulkan")]
            Backend::Vulkan => Device::vulkan(kind),
            #[cfg(feature = "cpu")]
            Backend::Cpu => Device::cpu(),
            #[cfg(feature = "flex")]
            Backend::Flex => Device::flex(),
            #[allow(unreachable_patterns)]
            other => unreachable!("{} is not compiled in", other.name()),
        }
    }

    /// The adapters to try, in order, when picking this backend unasked.
    fn default_adapters(self) -> &'static [Adapter] {
        match self {
            Backend::Wgpu | Backend::Vulkan => &[Adapter::Discrete, Adapter::Integrated],
            _ => &[Adapter::Default],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapter {
    Default,
    Discrete,
    Integrated,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s.to_ascii_lowercase())
            .with_context(|| format!("unknown device {s:?}: expected one of cuda, wgpu, vulkan, cpu, flex"))
    }
}

/// Float precision of model weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
            Precision::F16 => FloatDType::F16,
        }
    }

    pub fn dtype(self) -> DType {
        self.float_dtype().into()
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "f16" | "fp16" | "float16" => Ok(Precision::F16),
            _ => bail!("unknown dtype {s:?}: expected f32, bf16 or f16"),
        }
    }
}

/// A device that was initialised and checked with a tiny computation.
#[derive(Clone)]
pub struct Selected {
    pub backend: Backend,
    pub device: Device,
}

/// Picks the device named by `requested` (or `MAPO_DEVICE`), else the first compiled-in
/// GPU backend that initialises, else the CPU one.
pub fn select(requested: Option<&str>) -> Result<Selected> {
    let env = std::env::var("MAPO_DEVICE").ok().filter(|s| !s.is_empty());
    match requested.map(str::to_owned).or(env) {
        Some(name) => {
            // `cuda:1`, `wgpu:1`: the device's index (data-parallel ranks name theirs).
            let (name, index) = match name.split_once(':') {
                Some((b, i)) => (
                    b.to_string(),
                    i.parse::<usize>()
                        .with_context(|| format!("device {name:?}: the index after ':' is not a number"))?,
                ),
                None => (name.clone(), 0),
            };
            let backend: Backend = name.parse()?;
            if index > 0 && matches!(backend, Backend::Flex | Backend::Cpu) {
                bail!(
                    "device {name}:{index}: the {name} backend has one device (index 0); to run several ranks on it,                      repeat \"{name}\""
                );
            }
            if !backend.compiled_in() {
                let hint = if backend == Backend::Cpu && Backend::Flex.compiled_in() {
                    "; the CPU backend compiled in is the pure-Rust one: `--device flex`"
                } else {
                    ""
                };
                bail!(
                    "device {backend} is not compiled into this binary: rebuild with \
                     `cargo build --release --features {}`{hint}",
                    backend.feature()
                );
            }
            let device = try_init(backend, Adapter::Default, index).with_context(|| {
                format!("device {backend}:{index} failed to initialise (does it exist? is its driver installed?)")
            })?;
            Ok(announce(Selected { backend, device }, "asked for"))
        }
        None => {
            let mut errors = Vec::new();
            for backend in Backend::ALL.into_iter().filter(|b| b.compiled_in()) {
                for &adapter in backend.default_adapters() {
                    match try_init(backend, adapter, 0) {
                        Ok(device) => return Ok(announce(Selected { backend, device }, "default")),
                        Err(e) => errors.push(format!("{backend} ({adapter:?}): {e:#}")),
                    }
                }
            }
            bail!(
                "no backend initialised ({}); build with `--features flex` for the pure-Rust CPU backend",
                errors.join("; ")
            )
        }
    }
}

/// Every command says which device it computes on (stderr, so outputs stay clean).
fn announce(selected: Selected, how: &str) -> Selected {
    if std::env::var_os("MAPO_QUIET_DEVICE").is_none() {
        eprintln!("mapo: device {} ({how}): {:?}", selected.backend, selected.device);
    }
    selected
}

impl Selected {
    /// `--dtype NAME` for this device, or an error when the backend cannot compute in it
    /// (e.g. WGSL has no bf16) instead of a shader-compiler panic later.
    pub fn precision(&self, name: &str) -> Result<DType> {
        let dtype = name.parse::<Precision>()?.dtype();
        if !self.device.supports_dtype(dtype) {
            bail!("device {} cannot compute in {name} (the backend has no {dtype:?}); use --dtype f32", self.backend);
        }
        Ok(dtype)
    }
}

/// Initialising a backend whose driver is missing panics inside Burn/CubeCL: turn that
/// into an error so that a GPU-less machine falls back cleanly.
fn try_init(backend: Backend, adapter: Adapter, index: usize) -> Result<Device> {
    if backend == Backend::Cuda && !cuda_driver_present() {
        bail!("libcuda was not found");
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| {
        let device = backend.construct(adapter, index);
        let probe = Tensor::<1>::ones([4], &device).sum().into_scalar::<f32>();
        (device, probe)
    });
    std::panic::set_hook(hook);
    match result {
        Ok((device, 4.0)) => Ok(device),
        Ok((_, probe)) => bail!("probe computation returned {probe} instead of 4"),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            bail!("{msg}")
        }
    }
}

fn cuda_driver_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|lib| {
        let dirs = [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/local/cuda/lib64",
            "/usr/local/cuda/compat",
            "/usr/lib/wsl/lib",
        ];
        let ld = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        dirs.iter()
            .map(|d| d.to_string())
            .chain(ld.split(':').filter(|s| !s.is_empty()).map(str::to_string))
            .any(|d| std::path::Path::new(&d).join(lib).exists())
    })
}

/// `--device` and `--dtype`, shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Backend: cuda, wgpu, vulkan, cpu or flex (default: first GPU backend that initialises, else CPU).
    #[arg(long, env = "MAPO_DEVICE")]
    pub device: Option<String>,
    /// Float precision of weights and activations: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}
