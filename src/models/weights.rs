//! Building modules from named weights.
//!
//! Every constructor takes a [`Weights`] positioned at its diffusers key prefix, so the
//! module tree *is* the checkpoint's key tree. A missing or wrongly shaped tensor does not
//! stop construction: it is recorded, and [`Weights::finish`] reports every problem at once
//! together with the tensors the file has but the model did not use.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::rc::Rc;

use burn::module::Param;
use burn::tensor::{DType, Device, Distribution, Tensor};

use super::io::SafeTensorFiles;

/// How a tensor is initialised when the model is built without a checkpoint.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Normal(0, 1/sqrt(fan_in)).
    FanIn(usize),
    Zeros,
    Ones,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub missing: Vec<(String, Vec<usize>)>,
    pub mismatched: Vec<(String, Vec<usize>, Vec<usize>)>,
    pub unexpected: Vec<(String, Vec<usize>)>,
    pub unreadable: Vec<(String, String)>,
}

impl LoadReport {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty()
            && self.mismatched.is_empty()
            && self.unexpected.is_empty()
            && self.unreadable.is_empty()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 40;
        let section = |f: &mut fmt::Formatter<'_>, title: &str, lines: Vec<String>| {
            if lines.is_empty() {
                return Ok(());
            }
            writeln!(f, "  {} {title}:", lines.len())?;
            for l in lines.iter().take(MAX) {
                writeln!(f, "    {l}")?;
            }
            if lines.len() > MAX {
                writeln!(f, "    ... and {} more", lines.len() - MAX)?;
            }
            Ok(())
        };
        section(
            f,
            "wrongly shaped tensors (name: expected, found)",
            self.mismatched.iter().map(|(n, e, g)| format!("{n}: expected {e:?}, found {g:?}")).collect(),
        )?;
        section(
            f,
            "missing tensors (name: expected shape)",
            self.missing.iter().map(|(n, e)| format!("{n}: expected {e:?}")).collect(),
        )?;
        section(
            f,
            "unexpected tensors (name: shape)",
            self.unexpected.iter().map(|(n, g)| format!("{n}: {g:?}")).collect(),
        )?;
        section(f, "unreadable tensors", self.unreadable.iter().map(|(n, e)| format!("{n}: {e}")).collect())
    }
}

impl LoadReport {
    fn absorb(&mut self, other: LoadReport) {
        self.missing.extend(other.missing);
        self.mismatched.extend(other.mismatched);
        self.unreadable.extend(other.unreadable);
    }
}

impl<'a> Shared<'a> {
    /// A plain reader of `files` with the settings of `like`.
    fn reading(files: &'a SafeTensorFiles, like: &Shared<'_>) -> Self {
        Shared {
            source: Some(files),
            device: like.device.clone(),
            dtype: like.dtype,
            placeholders: false,
            lora: None,
            adapters: None,
            requested: RefCell::default(),
            used: RefCell::default(),
            report: RefCell::default(),
        }
    }
}

struct Shared<'a> {
    source: Option<&'a SafeTensorFiles>,
    device: Device,
    dtype: DType,
    /// Build the module tree with 1-element placeholders (key tree and counts only).
    placeholders: bool,
    /// Attach LoRA adapters to these layers; base weights are then frozen.
    lora: Option<super::lora::LoraConfig>,
    /// Where trained adapters come from (a LoRA checkpoint), if not from `source`.
    adapters: Option<&'a SafeTensorFiles>,
    requested: RefCell<Vec<(String, Vec<usize>)>>,
    used: RefCell<BTreeSet<String>>,
    report: RefCell<LoadReport>,
}

/// A cursor into a weight source at one key prefix.
#[derive(Clone)]
pub struct Weights<'a> {
    shared: Rc<Shared<'a>>,
    prefix: String,
}

impl<'a> Weights<'a> {
    /// Weights read from `source`, converted to `dtype` on `device`.
    pub fn from_files(source: &'a SafeTensorFiles, device: &Device, dtype: DType) -> Self {
        Self::new(Some(source), device, dtype, false)
    }

    /// Randomly initialised weights (benchmarks, tests).
    pub fn random(device: &Device, dtype: DType) -> Weights<'static> {
        Weights::new(None, device, dtype, false)
    }

    /// No weights at all: modules get 1-element placeholders and [`Weights::requested`]
    /// lists every key and shape the model asked for. The model must not be run.
    /// This is how the real 2.6B-parameter key tree is checked without 10 GB of memory.
    pub fn shapes_only(device: &Device) -> Weights<'static> {
        Weights::new(None, device, DType::F32, true)
    }

    fn new(source: Option<&'a SafeTensorFiles>, device: &Device, dtype: DType, placeholders: bool) -> Self {
        Self {
            shared: Rc::new(Shared {
                source,
                device: device.clone(),
                dtype,
                placeholders,
                lora: None,
                adapters: None,
                requested: RefCell::default(),
                used: RefCell::default(),
                report: RefCell::default(),
            }),
            prefix: String::new(),
        }
    }

    /// Builds the model of `build` against `source` without reading or allocating any
    /// weight: every missing, wrongly shaped and unused tensor is reported as
    /// [`Weights::finish`] would, before a config's shapes are allocated (an absurd
    /// `vocab_size` asks for terabytes, a wrong one for a zero placeholder of its size).
    pub fn precheck<M>(
        source: &SafeTensorFiles,
        lora: Option<super::lora::LoraConfig>,
        build: impl FnOnce(&Weights) -> anyhow::Result<M>,
    ) -> anyhow::Result<()> {
        let mut w = Weights::new(Some(source), &Device::default(), DType::F32, true);
        if let Some(lora) = lora {
            w = w.with_lora(lora);
        }
        drop(build(&w)?);
        Ok(w.finish()?)
    }

    /// Builds the model of a component folder (`config.json` + `<stem>.safetensors`, single
    /// or sharded): checked against the file first without allocating ([`Self::precheck`]),
    /// then loaded in `dtype` on `device`, every problem reported at once.
    pub fn load_dir<M, C: serde::de::DeserializeOwned>(
        dir: &std::path::Path,
        stems: &[&str],
        device: &Device,
        dtype: DType,
        build: impl Fn(&C, &Weights) -> anyhow::Result<M>,
    ) -> anyhow::Result<(M, C)> {
        Self::load_dir_with_lora(dir, stems, device, dtype, None, None, build)
    }

    /// [`Self::load_dir`] with LoRA adapters on the layers `lora` targets (base frozen):
    /// read from `adapters` (a LoRA checkpoint's file) when given, else fresh.
    pub fn load_dir_with_lora<M, C: serde::de::DeserializeOwned>(
        dir: &std::path::Path,
        stems: &[&str],
        device: &Device,
        dtype: DType,
        lora: Option<super::lora::LoraConfig>,
        adapters: Option<&std::path::Path>,
        build: impl Fn(&C, &Weights) -> anyhow::Result<M>,
    ) -> anyhow::Result<(M, C)> {
        use anyhow::Context;
        let (config, _) = super::config::read_config::<C>(dir)?;
        let files = SafeTensorFiles::open_component(dir, stems)?;
        let adapter_files = adapters.map(SafeTensorFiles::open_file).transpose()?;
        Self::precheck(&files, lora.clone(), |w| build(&config, w))
            .with_context(|| format!("loading {}", dir.display()))?;
        let mut w = Weights::from_files(&files, device, dtype);
        if let Some(lora) = lora {
            w = w.with_lora(lora);
        }
        if let Some(a) = &adapter_files {
            w = w.with_adapters(a);
        }
        let model = build(&config, &w)?;
        w.finish().with_context(|| format!("loading {}", dir.display()))?;
        Ok((model, config))
    }

    /// Attaches LoRA adapters (see [`super::lora`]) while building; base weights are
    /// frozen. Call before building the model.
    pub fn with_lora(mut self, config: super::lora::LoraConfig) -> Self {
        Rc::get_mut(&mut self.shared).expect("with_lora before building").lora = Some(config);
        self
    }

    /// Reads the adapters (`<layer>.lora.lora_a`, `.lora_b`) from `files` instead of the
    /// main source, which then holds the base weights only. Call before building the model.
    pub fn with_adapters(mut self, files: &'a SafeTensorFiles) -> Self {
        Rc::get_mut(&mut self.shared).expect("with_adapters before building").adapters = Some(files);
        self
    }

    /// The LoRA settings for the layer at this prefix, if it is a target.
    pub fn lora_here(&self) -> Option<&super::lora::LoraConfig> {
        self.shared.lora.as_ref().filter(|c| c.targets(&self.prefix))
    }

    pub fn device(&self) -> &Device {
        &self.shared.device
    }

    /// The dtype weights are loaded in.
    pub fn dtype(&self) -> DType {
        self.shared.dtype
    }

    /// True while building with 1-element placeholders (a precheck or a key-tree dry run):
    /// computed buffers must not be allocated at full size either.
    pub fn placeholders(&self) -> bool {
        self.shared.placeholders
    }

    /// The cursor one level down: `pp("down_blocks").pp(0)` reads `down_blocks.0.*`.
    pub fn pp(&self, name: impl fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Self { shared: self.shared.clone(), prefix }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) }
    }

    /// True when the source has `name` under this prefix (always false when random).
    pub fn contains(&self, name: &str) -> bool {
        self.shared.source.is_some_and(|s| s.get(&self.key(name)).is_some())
    }

    /// The tensor `name`, which must have `shape`; `init` is used when building without a
    /// checkpoint, and as a placeholder while a problem is recorded.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D], init: Init) -> Tensor<D> {
        self.tensor_any(&[name], shape, init)
    }

    /// Like [`Weights::tensor`], accepting older spellings of the same key (first is canonical).
    pub fn tensor_any<const D: usize>(&self, names: &[&str], shape: [usize; D], init: Init) -> Tensor<D> {
        let canonical = self.key(names[0]);
        self.shared.requested.borrow_mut().push((canonical.clone(), shape.to_vec()));
        if self.shared.placeholders {
            // A dry run against a source checks names and shapes without reading a byte.
            if let Some(source) = self.shared.source {
                match names.iter().map(|n| self.key(n)).find(|k| source.get(k).is_some()) {
                    None => self.shared.report.borrow_mut().missing.push((canonical, shape.to_vec())),
                    Some(key) => {
                        let found = source.shape(&key).unwrap_or_default().to_vec();
                        if found.as_slice() != shape.as_slice() {
                            self.shared.report.borrow_mut().mismatched.push((key.clone(), shape.to_vec(), found));
                        }
                        self.shared.used.borrow_mut().insert(key);
                    }
                }
            }
            return Tensor::zeros([1; D], (&self.shared.device, self.shared.dtype));
        }
        let Some(source) = self.shared.source else {
            return self.init(shape, init);
        };
        let found = names.iter().map(|n| self.key(n)).find(|k| source.get(k).is_some());
        let Some(key) = found else {
            self.shared.report.borrow_mut().missing.push((canonical, shape.to_vec()));
            return self.init(shape, Init::Zeros);
        };
        self.shared.used.borrow_mut().insert(key.clone());
        let view = source.get(&key).expect("checked above");
        if view.shape.as_slice() != shape.as_slice() {
            self.shared.report.borrow_mut().mismatched.push((key, shape.to_vec(), view.shape.clone()));
            return self.init(shape, Init::Zeros);
        }
        let data = view.to_data();
        source.release(&key);
        match data {
            Ok(data) => Tensor::from_data(data, (&self.shared.device, self.shared.dtype)),
            Err(e) => {
                self.shared.report.borrow_mut().unreadable.push((key, format!("{e:#}")));
                self.init(shape, Init::Zeros)
            }
        }
    }

    pub fn param<const D: usize>(&self, name: &str, shape: [usize; D], init: Init) -> Param<Tensor<D>> {
        let param = Param::from_tensor(self.tensor(name, shape, init));
        // With LoRA, every base weight is frozen: no gradient is computed or stored for it.
        if self.shared.lora.is_some() { param.set_require_grad(false) } else { param }
    }

    /// A trainable tensor that the source may hold (a checkpoint) or not (a base model):
    /// absent, it is initialised and nothing is reported missing. Always f32: it is a
    /// master weight even when the frozen base is held in bf16.
    pub fn optional_param<const D: usize>(&self, name: &str, shape: [usize; D], init: Init) -> Param<Tensor<D>> {
        let param = self.optional_tensor(name, shape, init);
        Param::from_tensor(if param.dtype() == DType::F32 { param } else { param.cast(DType::F32) })
    }

    fn optional_tensor<const D: usize>(&self, name: &str, shape: [usize; D], init: Init) -> Tensor<D> {
        if let Some(adapters) = self.shared.adapters {
            // A LoRA checkpoint must have every adapter the model builds.
            let view =
                Weights { shared: Rc::new(Shared::reading(adapters, &self.shared)), prefix: self.prefix.clone() };
            let t = view.tensor(name, shape, init);
            self.shared.report.borrow_mut().absorb(std::mem::take(&mut *view.shared.report.borrow_mut()));
            return t;
        }
        if self.contains(name) { self.tensor(name, shape, init) } else { self.init(shape, init) }
    }

    fn init<const D: usize>(&self, shape: [usize; D], init: Init) -> Tensor<D> {
        let opts = (&self.shared.device, self.shared.dtype);
        if self.shared.placeholders {
            return Tensor::zeros([1; D], opts);
        }
        match init {
            Init::Zeros => Tensor::zeros(shape, opts),
            Init::Ones => Tensor::ones(shape, opts),
            Init::FanIn(fan_in) => {
                let std = 1.0 / (fan_in.max(1) as f64).sqrt();
                Tensor::random(shape, Distribution::Normal(0.0, std), opts)
            }
        }
    }

    /// Accepts `name` under this prefix if the source has it, without loading it (buffers
    /// some files carry that are not weights, e.g. CLIP's `position_ids`).
    pub fn skip(&self, name: &str) {
        if self.contains(name) {
            self.shared.used.borrow_mut().insert(self.key(name));
        }
    }

    /// Every `(key, shape)` requested so far, in construction order.
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        self.shared.requested.borrow().clone()
    }

    /// Ends loading: every missing, mismatched, unreadable and unused tensor in one error.
    pub fn finish(self) -> Result<(), LoadError> {
        let Some(source) = self.shared.source else {
            return Ok(());
        };
        let used = self.shared.used.borrow();
        let mut report = std::mem::take(&mut *self.shared.report.borrow_mut());
        report.unexpected = source
            .names()
            .filter(|n| !used.contains(*n))
            .map(|n| (n.to_string(), source.shape(n).unwrap_or_default().to_vec()))
            .collect();
        if report.is_ok() { Ok(()) } else { Err(LoadError(report)) }
    }
}

/// The weights in a file do not fit the model built from its config.
#[derive(Debug)]
pub struct LoadError(pub LoadReport);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the weights do not match the model built from config.json:")?;
        write!(f, "{}", self.0)
    }
}

impl std::error::Error for LoadError {}
