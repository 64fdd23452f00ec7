//! LoRA: adapters on the attention projections, frozen base, export and merge.

mod common;

use burn::module::Module;
use burn::tensor::DType;
use common::*;
use mapo::models::lora::LoraConfig;
use mapo::models::named::{param_count, param_shapes};
use mapo::models::unet::UNet2DConditionModel;

#[test]
fn fresh_adapters_leave_the_output_unchanged_and_only_they_train() {
    let device = device();
    let dir = fixtures().join("tiny-sdxl/unet");
    let (base, _) = UNet2DConditionModel::from_dir(&dir, &device, DType::F32).unwrap();
    let (lora, _) =
        UNet2DConditionModel::from_dir_with_lora(&dir, &device, DType::F32, Some(LoraConfig::new(4)), None).unwrap();
    let adapters: Vec<_> = param_shapes(&lora).into_iter().filter(|(n, _)| n.contains(".lora.")).collect();
    // 4 projections × 2 matrices × (1 + 1 + 2 transformer layers down, 2 mid, 3 + 3 ... up).
    assert!(!adapters.is_empty());
    assert!(
        adapters.iter().all(|(n, _)| n.contains(".to_q.")
            || n.contains(".to_k.")
            || n.contains(".to_v.")
            || n.contains(".to_out.0.")),
        "{adapters:?}"
    );
    assert_eq!(
        param_count(&lora) - param_count(&base),
        adapters.iter().map(|(_, s)| s.iter().product::<usize>()).sum::<usize>()
    );

    let cases = open("unet_cases.safetensors");
    let run = |m: &UNet2DConditionModel| run_unet_case(m, &cases, "case0", &device);
    assert_close("lora at init", run(&lora), run(&base), 0.0);
}

#[test]
fn only_adapters_get_gradients() {
    let device = device().autodiff();
    let dir = fixtures().join("tiny-sdxl/unet");
    let (lora, _) =
        UNet2DConditionModel::from_dir_with_lora(&dir, &device, DType::F32, Some(LoraConfig::new(4)), None).unwrap();
    let g = open("unet_grads.safetensors");
    let out = run_unet_case(&lora, &g, "", &device);
    let grads = (out * g.float::<4>("probe", &device, DType::F32).unwrap()).sum().backward();
    let with_grad: Vec<String> = mapo::models::named::param_grads(&lora, &grads)
        .into_iter()
        .filter(|(_, g, _)| g.is_some())
        .map(|(n, _, _)| n)
        .collect();
    assert!(!with_grad.is_empty());
    assert!(with_grad.iter().all(|n| n.contains(".lora.lora_")), "{with_grad:?}");
}

/// A LoRA run writes diffusers-format adapters and a merged UNet equal to base + adapters.
/// (tools/golden/check_lora.py checks the same files with diffusers + PEFT: 2.1e-7.)
#[test]
fn lora_run_exports_adapters_and_a_merged_unet() {
    let dir = std::env::temp_dir().join(format!("mapo-lora-run-{}", std::process::id()));
    let model = fixtures().join("tiny-sdxl");
    tiny_lora_run(&dir, "mapo", "1e-2", "8x8");
    let out = dir.join("run");
    let file = mapo::models::io::SafeTensorFiles::open_file(&out.join("pytorch_lora_weights.safetensors")).unwrap();
    let names: Vec<&str> = file.names().collect();
    assert!(!names.is_empty());
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("unet.") && (n.ends_with(".lora_A.weight") || n.ends_with(".lora_B.weight")))
    );
    let a = file.get("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight").unwrap();
    assert_eq!(a.shape, vec![2, 32]);

    let device = device();
    let (merged, _) = UNet2DConditionModel::from_dir(&out.join("unet"), &device, DType::F32).unwrap();
    // LoRA checkpoints hold the adapters only; the base comes from the model folder.
    let ckpt = mapo::train::checkpoint::list(&out).unwrap().pop().unwrap();
    assert!(!ckpt.join("unet").exists());
    let cfg = LoraConfig { rank: 2, alpha: Some(4.0), targets: LoraConfig::new(2).targets };
    let adapters = ckpt.join("adapters.safetensors");
    let (adapted, _) =
        UNet2DConditionModel::from_dir_with_lora(&model.join("unet"), &device, DType::F32, Some(cfg), Some(&adapters))
            .unwrap();
    let (base, _) = UNet2DConditionModel::from_dir(&model.join("unet"), &device, DType::F32).unwrap();
    let cases = open("unet_cases.safetensors");
    let run_case = |m: &UNet2DConditionModel| run_unet_case(m, &cases, "case2", &device);
    let (m, a, b) = (run_case(&merged), run_case(&adapted), run_case(&base));
    assert!(rel_err(&to_vec(a.clone()), &to_vec(b)) > 1e-5, "training did not change the adapters");
    assert_close("merged vs adapters", m, a, 1e-5);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With LoRA, DPO's reference is the policy with zeroed adapters: exactly the base model.
#[test]
fn disabled_adapters_give_the_base_model() {
    let device = device();
    let dir = fixtures().join("tiny-sdxl/unet");
    let (base, _) = UNet2DConditionModel::from_dir(&dir, &device, DType::F32).unwrap();
    let (lora, _) =
        UNet2DConditionModel::from_dir_with_lora(&dir, &device, DType::F32, Some(LoraConfig::new(2)), None).unwrap();
    // Give the adapters non-zero B so that they matter, then disable them.
    let lora = lora.map(&mut mapo_test_set_b());
    let cases = open("unet_cases.safetensors");
    let run = |m: &UNet2DConditionModel| run_unet_case(m, &cases, "case1", &device);
    assert!(rel_err(&to_vec(run(&lora)), &to_vec(run(&base))) > 1e-4);
    assert_close("adapters disabled", run(&mapo::models::lora::disable_adapters(lora)), run(&base), 0.0);
}

/// Sets every `lora_b` to 0.3 so that the adapters change the output.
struct SetB {
    path: Vec<String>,
}

fn mapo_test_set_b() -> SetB {
    SetB { path: Vec::new() }
}

impl burn::module::ModuleMapper for SetB {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(
        &mut self,
        p: burn::module::Param<burn::tensor::Tensor<D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<D>> {
        if self.path.last().is_some_and(|n| n == "lora_b") {
            let (id, t, mapper) = p.consume();
            return burn::module::Param::from_mapped_value(id, t.ones_like().mul_scalar(0.3), mapper);
        }
        p
    }
}

/// A bf16 LoRA run holds its frozen base in bf16, yet its merged export is the folder's f32
/// weights plus the update: an untargeted layer comes out byte for byte as the folder has
/// it (merged from a bf16 copy it would be rounded), and the adapters stay f32.
#[test]
fn a_bf16_lora_run_merges_into_the_folders_own_weights() {
    let dir = std::env::temp_dir().join(format!("mapo-lora-bf16-{}", std::process::id()));
    let f32_run = tiny_lora_run(&dir, "mapo", "1e-3", "8x8");
    let out = dir.join("bf16");
    let config = dir.join("lora.toml");
    run_mapo(&[
        "train",
        "--config",
        config.to_str().unwrap(),
        "--set",
        "dtype=\"bf16\"",
        "--set",
        &format!("output_dir={:?}", out.display().to_string()),
        // bf16 on the CPU backend whatever the test backend (lavapipe's wgpu has no bf16);
        // the merge's precision does not depend on it.
        "--set",
        "device=\"flex\"",
    ]);
    let base = SafeTensorsFixture::open(&fixtures().join("tiny-sdxl/unet/diffusion_pytorch_model.safetensors"));
    let merged = SafeTensorsFixture::open(&out.join("unet/diffusion_pytorch_model.safetensors"));
    let key = "conv_in.weight";
    assert_eq!(merged.dtype(key), "F32");
    // The fixture stores f16, which f32 holds exactly and bf16 (3 fewer mantissa bits) does not.
    assert_eq!(base.dtype(key), "F16");
    assert_eq!(merged.f32_values(key), base.f32_values(key), "{key} is the folder's, not a bf16 copy's");
    let adapters = SafeTensorsFixture::open(&out.join("pytorch_lora_weights.safetensors"));
    assert!(adapters.names().iter().all(|n| adapters.dtype(n) == "F32"), "the adapters are f32 master weights");
    assert!(f32_run.join("unet").is_dir());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Raw safetensors access, independent of mapo's reader.
struct SafeTensorsFixture {
    bytes: Vec<u8>,
}

impl SafeTensorsFixture {
    fn open(path: &std::path::Path) -> Self {
        Self { bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) }
    }
    fn tensors(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes).unwrap()
    }
    fn names(&self) -> Vec<String> {
        self.tensors().names().into_iter().map(String::from).collect()
    }
    fn dtype(&self, name: &str) -> String {
        format!("{:?}", self.tensors().tensor(name).unwrap().dtype())
    }
    fn f32_values(&self, name: &str) -> Vec<f32> {
        let t = self.tensors().tensor(name).unwrap();
        match t.dtype() {
            safetensors::Dtype::F32 => t.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            safetensors::Dtype::F16 => {
                t.data().chunks(2).map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect()
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}
