//! LoRA files in the two layouts SDXL tools exchange:
//! - **peft**, what diffusers' `save_lora_weights` writes: `unet.<layer>.lora_A.weight`
//!   [r, in] and `lora_B.weight` [out, r], the adapter config (`r`, `lora_alpha`, patterns)
//!   as JSON under the safetensors metadata key `lora_adapter_metadata`;
//! - **kohya**, what sd-scripts writes and ComfyUI/A1111/Forge load:
//!   `lora_unet_<sgm layer with _>.lora_down.weight` [r, in], `.lora_up.weight` [out, r]
//!   and `.alpha` (a scalar); the update is `(alpha / r) · up · down`.
//!
//! Files are written with one alpha (the most common rank) and each layer's scale folded
//! into B / up, so that a reader that ignores alpha or the metadata still applies the right
//! update to every layer of that rank, and no reader depends on per-layer alphas.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::sgm::{BlockLayout, KOHYA_UNET, kohya_name, layer_of_kohya};
use crate::models::io::{PendingTensor, SafeTensorFiles, write_safetensors_with};
use crate::models::named::for_each_param;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    Peft,
    Kohya,
}

impl LoraFormat {
    pub fn name(self) -> &'static str {
        match self {
            LoraFormat::Peft => "peft",
            LoraFormat::Kohya => "kohya",
        }
    }
}

/// One layer's adapter: `W += scale · up · down`.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// [r, in] (PEFT's `lora_A`, kohya's `lora_down`).
    pub down: Tensor<2>,
    /// [out, r] (`lora_B`, `lora_up`).
    pub up: Tensor<2>,
    pub scale: f64,
}

impl Adapter {
    pub fn rank(&self) -> usize {
        self.down.dims()[0]
    }

    /// `scale · up · down` [out, in].
    pub fn delta(&self) -> Tensor<2> {
        self.up.clone().matmul(self.down.clone()).mul_scalar(self.scale)
    }
}

/// The adapters of a LoRA, by diffusers layer name (`down_blocks.1.attentions.0...to_q`).
#[derive(Debug, Clone)]
pub struct LoraFile {
    pub format: LoraFormat,
    /// The denoiser the adapters belong to, as diffusers prefixes PEFT keys: `unet`
    /// (SDXL) or `transformer` (SD3, FLUX).
    pub component: &'static str,
    pub adapters: BTreeMap<String, Adapter>,
}

const METADATA_KEY: &str = "lora_adapter_metadata";
/// Key prefixes of PEFT files and the component each stands for.
const PEFT_PREFIXES: [(&str, &str); 3] =
    [("unet.", "unet"), ("transformer.", "transformer"), ("base_model.model.", "unet")];
const KOHYA_TEXT: [&str; 3] = ["lora_te1_", "lora_te2_", "lora_te_"];

/// Names a few entries of a list for an error message.
fn some(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
    let more = if names.len() > shown.len() { format!(", ... ({} in all)", names.len()) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

impl LoraFile {
    /// Reads `path` in whichever format it is (detected from its keys); `layout` places
    /// kohya's sgm block indices.
    pub fn read(path: &Path, layout: &BlockLayout, device: &Device) -> Result<Self> {
        let files = SafeTensorFiles::open_file(path)?;
        let peft = files.names().any(|n| n.ends_with(".lora_A.weight"));
        let kohya = files.names().any(|n| n.ends_with(".lora_down.weight"));
        let read = match (peft, kohya) {
            (true, false) => read_peft(&files, device),
            (false, true) => read_kohya(&files, layout, device),
            (true, true) => bail!("both lora_A/lora_B (peft) and lora_down/lora_up (kohya) keys"),
            (false, false) => {
                bail!(
                    "no LoRA adapters (no key ends in .lora_A.weight, as peft files do, or .lora_down.weight, as kohya files do)"
                )
            }
        };
        let lora = read.with_context(|| format!("{}", path.display()))?;
        let mismatched: Vec<String> = lora
            .adapters
            .iter()
            .filter(|(_, a)| a.up.dims()[1] != a.rank())
            .map(|(k, a)| format!("{k} (down {:?}, up {:?})", a.down.dims(), a.up.dims()))
            .collect();
        ensure!(
            mismatched.is_empty(),
            "{}: adapters whose two matrices disagree on the rank: {}",
            path.display(),
            some(&mismatched)
        );
        lora.check_values().with_context(|| format!("{}", path.display()))?;
        Ok(lora)
    }

    /// Every adapter has a rank, a finite scale and finite weights: a NaN anywhere would
    /// merge into the UNet and sample black images without a word.
    fn check_values(&self) -> Result<()> {
        for (layer, a) in &self.adapters {
            ensure!(a.rank() > 0, "{layer}: rank 0 (an adapter with no rows)");
            ensure!(a.scale.is_finite(), "{layer}: its scale (alpha / rank) is {}, not a finite number", a.scale);
            for (which, t) in [("down (lora_A)", &a.down), ("up (lora_B)", &a.up)] {
                let values = t.to_data().convert::<f32>();
                let values = values.as_slice::<f32>().map_err(|e| anyhow::anyhow!("{layer}: {e:?}"))?;
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    bail!("{layer}: {which} holds {} at flat index {i}", values[i]);
                }
            }
        }
        Ok(())
    }

    /// Every adapter against the layers of a model (`shapes`: parameter name → shape): each
    /// must name a linear weight whose shape is `up · down`'s.
    pub fn check_layers(&self, shapes: &BTreeMap<String, Vec<usize>>) -> Result<()> {
        let mut errors = Vec::new();
        for (layer, a) in &self.adapters {
            let want = vec![a.up.dims()[0], a.down.dims()[1]];
            match shapes.get(&format!("{layer}.weight")) {
                None => errors.push(format!("{layer} (no such layer)")),
                Some(s) if *s != want => errors.push(format!("{layer} (the weight is {s:?}, up·down {want:?})")),
                Some(_) => {}
            }
        }
        ensure!(
            errors.is_empty(),
            "{} of the {} adapters do not fit the model: {}",
            errors.len(),
            self.adapters.len(),
            some(&errors)
        );
        Ok(())
    }

    /// The adapters of `module` (the `lora_a`/`lora_b` parameters of its LoRA layers), each
    /// applied at `scale`.
    pub fn from_module<M: Module>(module: &M, scale: f64) -> Self {
        let mut parts: BTreeMap<String, [Option<Tensor<2>>; 2]> = BTreeMap::new();
        for_each_param(module, |name, t, shape| {
            let matrix = || t.clone().reshape([shape[0] as i32, -1]);
            if let Some(layer) = name.strip_suffix(".lora.lora_a") {
                parts.entry(layer.to_string()).or_default()[0] = Some(matrix());
            } else if let Some(layer) = name.strip_suffix(".lora.lora_b") {
                parts.entry(layer.to_string()).or_default()[1] = Some(matrix());
            }
        });
        let adapters = parts
            .into_iter()
            .map(|(k, [down, up])| (k, Adapter { down: down.expect("lora_a"), up: up.expect("lora_b"), scale }))
            .collect();
        Self { format: LoraFormat::Peft, component: "unet", adapters }
    }

    /// The same adapters, belonging to `component` (`unet` or `transformer`).
    pub fn for_component(mut self, component: &'static str) -> Self {
        self.component = component;
        self
    }

    /// Writes the adapters in `format` (scale folded into B / up, one alpha).
    pub fn write(&self, path: &Path, format: LoraFormat, layout: &BlockLayout) -> Result<()> {
        ensure!(!self.adapters.is_empty(), "{}: no adapters to write", path.display());
        let mut tensors = Vec::new();
        let matrix = |name: String, t: Tensor<2>| PendingTensor {
            name,
            shape: t.dims().to_vec(),
            dtype: DType::F32,
            data: Box::new(move || t.into_data()),
        };
        let mut metadata = BTreeMap::new();
        let ranks: Vec<usize> = self.adapters.values().map(Adapter::rank).collect();
        let common = most_common(&ranks);
        // One alpha for every layer (the common rank): diffusers 0.42 drops a kohya file's
        // per-layer alphas that differ from the most common one (its alpha_pattern keys keep
        // the old processor names and match nothing), so a layer of another rank carries
        // its scale in B / up instead: B' = B · scale · r / alpha, applied at alpha / r.
        let fold = |a: &Adapter| a.scale * a.rank() as f64 / common as f64;
        match format {
            LoraFormat::Peft => {
                for (layer, a) in &self.adapters {
                    let c = self.component;
                    tensors.push(matrix(format!("{c}.{layer}.lora_A.weight"), a.down.clone()));
                    tensors.push(matrix(format!("{c}.{layer}.lora_B.weight"), a.up.clone().mul_scalar(fold(a))));
                }
                let ranks: serde_json::Map<String, serde_json::Value> = self
                    .adapters
                    .iter()
                    .filter(|(_, a)| a.rank() != common)
                    .map(|(k, a)| (k.clone(), a.rank().into()))
                    .collect();
                let c = self.component;
                let config = serde_json::json!({
                    format!("{c}.r"): common,
                    format!("{c}.lora_alpha"): common,
                    format!("{c}.target_modules"): self.adapters.keys().collect::<Vec<_>>(),
                    format!("{c}.rank_pattern"): ranks,
                });
                metadata.insert(METADATA_KEY.to_string(), serde_json::to_string_pretty(&config)?);
            }
            LoraFormat::Kohya if self.component == "transformer" => {
                // FLUX's (BFL) layer names; the caller has made sure the LoRA is FLUX's.
                let hidden = super::flux_kohya::hidden_size(&self.adapters)
                    .context("no adapter inside FLUX's blocks: nothing places the fused layers")?;
                let fused = super::flux_kohya::fuse(&self.adapters, hidden, 4 * hidden)?;
                let outer: Vec<&str> = fused
                    .iter()
                    .map(|(m, ..)| m.as_str())
                    .filter(|m| !m.contains("double_blocks_") && !m.contains("single_blocks_"))
                    .collect();
                if !outer.is_empty() {
                    eprintln!(
                        "warning: {}: diffusers' load_lora_weights drops kohya FLUX modules outside the blocks \
                         (ComfyUI applies them): {}",
                        path.display(),
                        outer.join(", ")
                    );
                }
                for (module, down, up, alpha) in fused {
                    tensors.push(matrix(format!("{module}.lora_down.weight"), down));
                    tensors.push(matrix(format!("{module}.lora_up.weight"), up));
                    tensors.push(PendingTensor {
                        name: format!("{module}.alpha"),
                        shape: vec![],
                        dtype: DType::F32,
                        data: Box::new(move || TensorData::new(vec![alpha], Vec::<usize>::new())),
                    });
                }
                metadata.insert("ss_network_module".into(), "networks.lora_flux".into());
                metadata.insert("ss_base_model_version".into(), "flux1".into());
            }
            LoraFormat::Kohya => {
                for (layer, a) in &self.adapters {
                    let module = kohya_name(layer, layout)?;
                    tensors.push(matrix(format!("{module}.lora_down.weight"), a.down.clone()));
                    tensors.push(matrix(format!("{module}.lora_up.weight"), a.up.clone().mul_scalar(fold(a))));
                    let alpha = common as f32;
                    tensors.push(PendingTensor {
                        name: format!("{module}.alpha"),
                        shape: vec![],
                        dtype: DType::F32,
                        data: Box::new(move || TensorData::new(vec![alpha], Vec::<usize>::new())),
                    });
                }
                // What sd-scripts records, so that tools that read it (and humans) see the
                // network; `mapo_block_layout` lets `mapo lora convert` map the blocks back.
                metadata.insert("ss_network_module".into(), "networks.lora".into());
                metadata.insert("ss_network_dim".into(), common.to_string());
                metadata.insert("ss_network_alpha".into(), common.to_string());
                metadata.insert("ss_base_model_version".into(), "sdxl_base_v1-0".into());
                metadata.insert(
                    "mapo_block_layout".into(),
                    serde_json::json!({"down": layout.down, "up": layout.up}).to_string(),
                );
            }
        }
        write_safetensors_with(path, tensors, &metadata)
    }

    /// `module` with every adapter folded into its layer's weight: `W += scale · up · down`.
    /// Every adapter must find a linear layer of matching shape; the errors list those
    /// that do not.
    pub fn apply<M: Module>(&self, module: M) -> Result<M> {
        let mut mapper = Apply { path: Vec::new(), lora: self, seen: Vec::new(), errors: Vec::new() };
        let module = module.map(&mut mapper);
        ensure!(mapper.errors.is_empty(), "adapters that do not fit their layer: {}", some(&mapper.errors));
        let missing: Vec<String> = self.adapters.keys().filter(|k| !mapper.seen.contains(k)).cloned().collect();
        ensure!(
            missing.is_empty(),
            "{} of the {} adapters name layers the {} does not have (or that are not linear): {}",
            missing.len(),
            self.adapters.len(),
            if self.component == "unet" { "UNet" } else { "transformer" },
            some(&missing)
        );
        Ok(module)
    }
}

fn most_common(values: &[usize]) -> usize {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(*v).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(v, c)| (*c, std::cmp::Reverse(*v))).map(|(v, _)| v).unwrap_or(0)
}

fn matrix(files: &SafeTensorFiles, key: &str, device: &Device) -> Result<Tensor<2>> {
    let shape = files.shape(key).with_context(|| format!("no tensor {key}"))?;
    match shape.len() {
        2 => files.float::<2>(key, device, DType::F32),
        4 => {
            bail!("{key} has shape {shape:?}: convolution adapters (LoCon/LyCORIS) are not supported, only linear ones")
        }
        _ => bail!("{key} has shape {shape:?}, expected [rank, features]"),
    }
}

/// PEFT's `lora_alpha`, per layer (`alpha_pattern` over the default), and `use_rslora`.
struct PeftConfig {
    alpha: Option<f64>,
    alpha_pattern: BTreeMap<String, f64>,
    rslora: bool,
}

impl PeftConfig {
    fn of(files: &SafeTensorFiles, component: &str) -> Result<Self> {
        let mut config = Self { alpha: None, alpha_pattern: BTreeMap::new(), rslora: false };
        let Some(raw) = files.metadata(METADATA_KEY) else { return Ok(config) };
        let json: serde_json::Value =
            serde_json::from_str(raw).with_context(|| format!("metadata {METADATA_KEY} is not JSON"))?;
        ensure!(json.is_object(), "metadata {METADATA_KEY} is {json}; expected a JSON object (the adapter config)");
        // A value of the wrong type is an error: ignoring it would fall back to alpha = r.
        let get = |k: &str| json.get(format!("{component}.{k}")).or_else(|| json.get(k)).filter(|v| !v.is_null());
        let number = |k: &str, v: &serde_json::Value| {
            v.as_f64().with_context(|| format!("metadata {METADATA_KEY}: {k} is {v}; expected a number"))
        };
        let flag = |k: &str| -> Result<bool> {
            get(k).map_or(Ok(false), |v| {
                v.as_bool().with_context(|| format!("metadata {METADATA_KEY}: {k} is {v}; expected true or false"))
            })
        };
        if flag("use_dora")? {
            bail!("a DoRA adapter (use_dora): not supported, only plain LoRA");
        }
        config.alpha = get("lora_alpha").map(|v| number("lora_alpha", v)).transpose()?;
        config.rslora = flag("use_rslora")?;
        if let Some(p) = get("alpha_pattern") {
            let p = p
                .as_object()
                .with_context(|| format!("metadata {METADATA_KEY}: alpha_pattern is {p}; expected an object"))?;
            for (k, v) in p {
                config.alpha_pattern.insert(k.clone(), number(&format!("alpha_pattern {k:?}"), v)?);
            }
        }
        Ok(config)
    }

    /// PEFT: alpha / r (alpha / √r with rsLoRA); without a config, diffusers' default
    /// alpha = r.
    fn scale(&self, layer: &str, rank: usize) -> f64 {
        let pattern = self.alpha_pattern.iter().find(|(p, _)| layer == p.as_str() || layer.ends_with(&format!(".{p}")));
        let alpha = pattern.map(|(_, a)| *a).or(self.alpha).unwrap_or(rank as f64);
        if self.rslora { alpha / (rank as f64).sqrt() } else { alpha / rank as f64 }
    }
}

fn read_peft(files: &SafeTensorFiles, device: &Device) -> Result<LoraFile> {
    let modules = || files.names().filter_map(|n| n.strip_suffix(".lora_A.weight"));
    let components: std::collections::BTreeSet<&'static str> =
        modules().filter_map(|m| PEFT_PREFIXES.iter().find(|(p, _)| m.starts_with(p)).map(|(_, c)| *c)).collect();
    ensure!(
        components.len() <= 1,
        "adapters for both the UNet (unet.) and a transformer (transformer.): one model's LoRA per file"
    );
    let component = components.into_iter().next().unwrap_or("unet");
    let config = PeftConfig::of(files, component)?;
    let mut adapters = BTreeMap::new();
    let (mut foreign, mut text) = (Vec::new(), Vec::new());
    for key in files.names().filter(|n| n.ends_with(".lora_A.weight")) {
        let module = key.strip_suffix(".lora_A.weight").expect("filtered");
        let Some(layer) = PEFT_PREFIXES.iter().find_map(|(p, _)| module.strip_prefix(p)) else {
            if module.starts_with("text_encoder") {
                text.push(module.to_string())
            } else {
                foreign.push(module.to_string())
            }
            continue;
        };
        let down = matrix(files, key, device)?;
        let up = matrix(files, &format!("{module}.lora_B.weight"), device)?;
        let rank = down.dims()[0];
        let scale = match files.shape(&format!("{module}.alpha")) {
            Some(_) => files.scalar(&format!("{module}.alpha"))? / rank as f64,
            None => config.scale(layer, rank),
        };
        adapters.insert(layer.to_string(), Adapter { down, up, scale });
    }
    ensure!(text.is_empty(), "text-encoder adapters are not supported, only the denoiser's: {}", some(&text));
    ensure!(
        foreign.is_empty(),
        "adapters outside the denoiser (keys start with unet. or transformer.): {}",
        some(&foreign)
    );
    refuse_leftovers(files, &[".lora_A.weight", ".lora_B.weight", ".alpha"], ".lora_A.weight")?;
    Ok(LoraFile { format: LoraFormat::Peft, component, adapters })
}

/// A kohya / BFL-layout FLUX LoRA (`flux_kohya`): fused layers split into diffusers' parts.
fn read_flux_kohya(files: &SafeTensorFiles, device: &Device) -> Result<LoraFile> {
    let mut adapters = BTreeMap::new();
    let mut unknown = Vec::new();
    for key in files.names().filter(|n| n.ends_with(".lora_down.weight")) {
        let module = key.strip_suffix(".lora_down.weight").expect("filtered");
        if !super::flux_kohya::is_flux_module(module) {
            unknown.push(module.to_string());
            continue;
        }
        let down = matrix(files, key, device)?;
        let up = matrix(files, &format!("{module}.lora_up.weight"), device)?;
        let rank = down.dims()[0];
        ensure!(up.dims()[1] == rank, "{module}: down {:?} and up {:?} disagree on the rank", down.dims(), up.dims());
        let alpha_key = format!("{module}.alpha");
        let alpha = if files.shape(&alpha_key).is_some() { files.scalar(&alpha_key)? } else { rank as f64 };
        for (layer, adapter) in super::flux_kohya::split(module, down, up, alpha / rank as f64)? {
            if adapters.insert(layer.clone(), adapter).is_some() {
                bail!("two kohya modules map to the layer {layer} (the last: {module})");
            }
        }
    }
    ensure!(unknown.is_empty(), "modules FLUX's transformer does not have: {}", some(&unknown));
    refuse_leftovers(files, &[".lora_down.weight", ".lora_up.weight", ".alpha"], ".lora_down.weight")?;
    Ok(LoraFile { format: LoraFormat::Kohya, component: "transformer", adapters })
}

fn read_kohya(files: &SafeTensorFiles, layout: &BlockLayout, device: &Device) -> Result<LoraFile> {
    if files.names().filter_map(|n| n.strip_suffix(".lora_down.weight")).any(super::flux_kohya::is_flux_module) {
        return read_flux_kohya(files, device);
    }
    let layout = match files.metadata("mapo_block_layout") {
        // A file mapo wrote records the layout its sgm indices were computed with.
        Some(raw) => {
            let v: serde_json::Value = serde_json::from_str(raw).context("metadata mapo_block_layout")?;
            let list = |k: &str| -> Option<Vec<usize>> {
                v.get(k)?.as_array()?.iter().map(|x| x.as_u64().map(|x| x as usize)).collect()
            };
            BlockLayout {
                down: list("down").unwrap_or(layout.down.clone()),
                up: list("up").unwrap_or(layout.up.clone()),
            }
        }
        None => layout.clone(),
    };
    let mut adapters = BTreeMap::new();
    let (mut text, mut unknown) = (Vec::new(), Vec::new());
    for key in files.names().filter(|n| n.ends_with(".lora_down.weight")) {
        let module = key.strip_suffix(".lora_down.weight").expect("filtered");
        if KOHYA_TEXT.iter().any(|p| module.starts_with(p)) {
            text.push(module.to_string());
            continue;
        }
        let layer = match layer_of_kohya(module, &layout) {
            Ok(l) => l,
            Err(e) => {
                unknown.push(format!("{e}"));
                continue;
            }
        };
        let down = matrix(files, key, device)?;
        let up = matrix(files, &format!("{module}.lora_up.weight"), device)?;
        let rank = down.dims()[0];
        let alpha_key = format!("{module}.alpha");
        let alpha = if files.shape(&alpha_key).is_some() { files.scalar(&alpha_key)? } else { rank as f64 };
        if adapters.insert(layer.clone(), Adapter { down, up, scale: alpha / rank as f64 }).is_some() {
            bail!("two kohya modules map to the layer {layer} (the last: {module})");
        }
    }
    let other: Vec<String> = files
        .names()
        .filter(|n| ["hada_", "lokr_", "lora_mid", "dora_scale", "magnitude"].iter().any(|p| n.contains(p)))
        .map(str::to_string)
        .collect();
    ensure!(other.is_empty(), "LyCORIS/DoRA tensors (only plain LoRA is supported): {}", some(&other));
    ensure!(
        text.is_empty(),
        "text-encoder adapters are not supported, only the UNet's ({KOHYA_UNET}...): {}",
        some(&text)
    );
    ensure!(unknown.is_empty(), "modules the UNet does not have: {}", some(&unknown));
    refuse_leftovers(files, &[".lora_down.weight", ".lora_up.weight", ".alpha"], ".lora_down.weight")?;
    Ok(LoraFile { format: LoraFormat::Kohya, component: "unet", adapters })
}

/// Tensors that belong to no adapter: an `up`/`B` or `alpha` without its `down`/`A` (half an
/// adapter), DoRA magnitudes, anything else. Dropping them would apply another LoRA than
/// the file's.
fn refuse_leftovers(files: &SafeTensorFiles, parts: &[&str], down: &str) -> Result<()> {
    let leftovers: Vec<String> = files
        .names()
        .filter(|n| {
            !parts
                .iter()
                .any(|p| n.strip_suffix(p).is_some_and(|module| files.shape(&format!("{module}{down}")).is_some()))
        })
        .map(str::to_string)
        .collect();
    let dora = leftovers.iter().any(|n| n.contains("magnitude") || n.contains("dora_scale"));
    ensure!(
        leftovers.is_empty(),
        "tensors that belong to no adapter{}: {}",
        if dora {
            " (DoRA magnitudes: only plain LoRA is supported)"
        } else {
            " (an up/B or alpha without its down/A?)"
        },
        some(&leftovers)
    );
    Ok(())
}

struct Apply<'a> {
    path: Vec<String>,
    lora: &'a LoraFile,
    /// Layers whose adapter was met (applied, or listed in `errors`).
    seen: Vec<String>,
    errors: Vec<String>,
}

impl burn::module::ModuleMapper for Apply<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(crate::models::named::segment(name).to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: burn::module::Param<Tensor<D>>) -> burn::module::Param<Tensor<D>> {
        let name = self.path.join(".");
        let Some(layer) = name.strip_suffix(".weight") else { return param };
        let Some(adapter) = self.lora.adapters.get(layer) else { return param };
        if D != 2 {
            return param;
        }
        self.seen.push(layer.to_string());
        let (id, w, mapper) = param.consume();
        let delta = adapter.delta().to_device(&w.device());
        if delta.dims().as_slice() != w.dims().as_slice() {
            self.errors.push(format!("{layer} (up·down is {:?}, the weight {:?})", delta.dims(), w.dims()));
            return burn::module::Param::from_mapped_value(id, w, mapper);
        }
        let merged = w.clone() + delta.cast(w.dtype()).reshape(w.dims());
        burn::module::Param::from_mapped_value(id, merged, mapper)
    }
}
