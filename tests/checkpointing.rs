//! Block-level gradient checkpointing (`models::unet::checkpoint`) gives the gradients of the
//! ordinary backward pass: the same forward values, and each slot's incoming gradients summed
//! in the graph's order. Full fine-tuning (every unit trains, the time embedding included) and
//! LoRA (only attention adapters train, gradients pass through frozen units); a DPO-type
//! method (with a reference) and a reference-free one; f32 and bf16 activations.

mod common;

use burn::module::Module;
use burn::tensor::{DType, Tensor, TensorData};
use mapo::losses::{Params, build};
use mapo::models::lora::LoraConfig;
use mapo::models::unet::UNet2DConditionModel;
use mapo::models::weights::Weights;
use mapo::objective::Objective;
use mapo::sample::noise::gaussian;
use mapo::train::step::{Execution, PairBatch, forward_backward};

fn tensor<const D: usize>(seed: u64, shape: [usize; D], device: &burn::tensor::Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(gaussian(seed, n), shape), device)
}

fn batch(device: &burn::tensor::Device, latent: usize) -> PairBatch {
    let b = 2;
    PairBatch {
        chosen: tensor(1, [b, 4, latent, latent], device),
        rejected: Some(tensor(2, [b, 4, latent, latent], device)),
        labels: None,
        noise: tensor(3, [b, 4, latent, latent], device),
        timesteps: vec![17, 640],
        encoder_hidden_states: tensor(4, [b, 77, 48], device),
        text_embeds: tensor(5, [b, 32], device),
        time_ids: Some(Tensor::from_data(
            TensorData::new([64.0f32, 64.0, 0.0, 0.0, 64.0, 64.0].repeat(b), [b, 6]),
            device,
        )),
        guidance: None,
    }
}

fn check(lora: Option<usize>, method: &str, dtype: DType) {
    let (config, _) = mapo::bench::unet_config("tiny").unwrap();
    let plain = common::device();
    let device = plain.clone().autodiff();
    device.seed(11);
    let mut w = Weights::random(&device, DType::F32);
    if let Some(rank) = lora {
        w = w.with_lora(LoraConfig::new(rank));
    }
    let unet = UNet2DConditionModel::load(&config, &w).unwrap();
    // (LoRA's B starts at zero, so A's gradients are zero in both; B's carry the check.)
    let method = build(method, Params::default()).unwrap();
    let reference = method.uses_reference().then(|| unet.valid());
    let batch = batch(&device, 8);
    let objective = Objective::sdxl();
    let run = |checkpointing| {
        let exec = Execution { dtype, checkpointing };
        forward_backward(&unet, reference.as_ref(), &method, &batch, &objective, exec)
    };
    let (plain_step, ckpt) = (run(false), run(true));
    assert_eq!(plain_step.loss, ckpt.loss, "the forward pass is the same");
    assert_eq!(plain_step.grads.len(), ckpt.grads.len(), "the same parameters get gradients");
    let mut worst = 0f32;
    for (name, g) in &plain_step.grads {
        let other = ckpt.grads.get(name).unwrap_or_else(|| panic!("{name}: no gradient with checkpointing"));
        let (a, b) = (common::to_vec(g.clone()), common::to_vec(other.clone()));
        worst = worst.max(common::rel_err(&b, &a));
    }
    eprintln!("{} lora {lora:?} {dtype:?}: worst relative gradient difference {worst:e}", method.name);
    // Most parameters' gradients are equal bit for bit; a few early ones differ by the
    // rounding of sums met in another order: f32 measured 0 to 2.7e-7 of the tensor's
    // largest magnitude, bf16 (8 significant bits) up to 1.8e-2.
    let tolerance = if dtype == DType::F32 { 1e-6 } else { 3e-2 };
    assert!(worst <= tolerance, "gradients differ by {worst:e} relative (tolerance {tolerance:e})");
}

/// One test: the device's generator that draws the weights is shared, so parallel tests
/// would interleave their draws.
#[test]
fn checkpointed_gradients_match_the_whole_graph() {
    check(None, "mapo", DType::F32);
    check(Some(4), "dpo", DType::F32);
    check(Some(4), "mapo", DType::BF16);
}

/// Checkpointed against whole-graph gradients of a flow-family transformer (`load` with
/// an optional LoRA rank): full fine-tuning with MaPO, LoRA with a reference (DPO).
fn check_flow<M: mapo::family::TrainDenoiser>(
    what: &str,
    load: impl Fn(Option<LoraConfig>, &burn::tensor::Device) -> M,
    [c, h, w]: [usize; 3],
    [tokens, d, pooled]: [usize; 3],
    guidance: Option<f32>,
) {
    use mapo::objective::{FlowMatching, Objective};
    let plain = common::device();
    let device = plain.clone().autodiff();
    for (lora, method) in [(None, "mapo"), (Some(2), "dpo")] {
        device.seed(5);
        let model = load(lora.map(LoraConfig::new), &device);
        let method = build(method, Params::default()).unwrap();
        let reference = method.uses_reference().then(|| model.valid());
        let b = 2;
        let batch = PairBatch {
            chosen: tensor(1, [b, c, h, w], &device),
            rejected: Some(tensor(2, [b, c, h, w], &device)),
            labels: None,
            noise: tensor(3, [b, c, h, w], &device),
            timesteps: vec![0, 1],
            encoder_hidden_states: tensor(4, [b, tokens, d], &device),
            text_embeds: tensor(5, [b, pooled], &device),
            time_ids: None,
            guidance: guidance.map(|g| Tensor::from_data(TensorData::new(vec![g, g + 1.0], [b]), &device)),
        };
        let objective = Objective::Flow(FlowMatching::at_sigmas(vec![0.7, 0.25]).unwrap());
        let run = |checkpointing| {
            let exec = Execution { dtype: DType::F32, checkpointing };
            forward_backward(&model, reference.as_ref(), &method, &batch, &objective, exec)
        };
        let (whole, ckpt) = (run(false), run(true));
        assert!((whole.loss - ckpt.loss).abs() <= 1e-6 * whole.loss.abs(), "{} vs {}", whole.loss, ckpt.loss);
        assert_eq!(whole.grads.len(), ckpt.grads.len(), "the same parameters get gradients");
        let mut worst = 0f32;
        for (name, g) in &whole.grads {
            let other = ckpt.grads.get(name).unwrap_or_else(|| panic!("{name}: no gradient with checkpointing"));
            worst = worst.max(common::rel_err(&common::to_vec(other.clone()), &common::to_vec(g.clone())));
        }
        eprintln!(
            "{what} {} lora {lora:?}: {} gradients, worst relative difference {worst:e}",
            method.name,
            whole.grads.len()
        );
        // Sums met in another order: rounding only (measured below 1e-6).
        assert!(worst <= 1e-5, "gradients differ by {worst:e} relative");
    }
}

/// SD3's transformer (`models::sd3::checkpoint`): each joint block rerun on its saved inputs,
/// the timestep vector's gradient summed over the blocks before the embeddings' backward.
/// Full fine-tuning (embeddings, MMDiT-X attn2 and the text stream's last-block projections
/// included) and LoRA with a reference (DPO), on the flow objective, on the tiny SD3.5 folder.
#[test]
fn sd3_checkpointed_gradients_match_the_whole_graph() {
    use mapo::models::sd3::SD3Transformer2DModel;
    let dir = common::fixtures().join("tiny-sd35/transformer");
    let load = |lora, device: &burn::tensor::Device| {
        SD3Transformer2DModel::from_dir_with_lora(&dir, device, DType::F32, lora, None).unwrap().0
    };
    check_flow("sd3", load, [16, 8, 6], [9, 24, 20], None);
}

/// FLUX's transformer (`models::flux::checkpoint`): double-stream blocks, then the
/// single-stream blocks over the joint sequence (the text part of the last output unused),
/// rerun in reverse with the rotary tables rebuilt on the autodiff device; [dev] with its
/// guidance embedder.
#[test]
fn flux_checkpointed_gradients_match_the_whole_graph() {
    use mapo::models::flux::FluxTransformer2DModel;
    let dir = common::fixtures().join("tiny-flux-dev/transformer");
    let load = |lora, device: &burn::tensor::Device| {
        FluxTransformer2DModel::from_dir_with_lora(&dir, device, DType::F32, lora, None).unwrap().0
    };
    check_flow("flux", load, [16, 8, 6], [7, 24, 8], Some(3.5));
}
