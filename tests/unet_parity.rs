//! UNet parity with diffusers (fixtures from tools/golden/make_unet_vae.py).
//!
//! Tolerances: outputs within 1e-4 of diffusers relative to the output's max magnitude
//! (f32); gradients within 1e-3 relative to each gradient tensor's max magnitude.

mod common;

use burn::tensor::{DType, Tensor};
use common::*;
use mapo::models::unet::UNet2DConditionModel;

fn load(device: &burn::tensor::Device) -> UNet2DConditionModel {
    UNet2DConditionModel::from_dir(&fixtures().join("tiny-sdxl/unet"), device, DType::F32).unwrap().0
}

#[test]
fn unet_matches_diffusers_forward() {
    let device = device();
    let unet = load(&device);
    let cases = open("unet_cases.safetensors");
    for case in ["case0", "case1", "case2"] {
        let want = cases.float::<4>(&format!("{case}.out"), &device, DType::F32).unwrap();
        let got = run_unet_case(&unet, &cases, case, &device);
        assert_close(&format!("unet {case} {:?}", want.dims()), got, want, 1e-4);
    }
}

#[test]
fn unet_gradients_match_pytorch() {
    let device = device().autodiff();
    let unet = load(&device);
    let g = open("unet_grads.safetensors");
    let f = |n: &str| g.float::<4>(n, &device, DType::F32).unwrap();
    let out = run_unet_case(&unet, &g, "", &device);
    let scalar: Tensor<1> = (out * f("probe")).sum();
    let want_scalar = g.float::<1>("scalar", &device, DType::F32).unwrap();
    assert_close("scalar", scalar.clone().inner(), want_scalar.inner(), 1e-4);
    let grads = scalar.backward();

    let all = mapo::models::named::param_grads(&unet, &grads);
    let mut checked = 0;
    for name in g.names().filter_map(|n| n.strip_prefix("grad.")).map(str::to_string).collect::<Vec<_>>() {
        let view = g.get(&format!("grad.{name}")).unwrap();
        let (_, got, shape) = all.iter().find(|(n, _, _)| *n == name).unwrap_or_else(|| panic!("no parameter {name}"));
        assert_eq!(&view.shape, shape, "{name}: shape");
        let got = got.clone().unwrap_or_else(|| panic!("no gradient for {name}"));
        let values = view.to_data().unwrap().convert::<f32>().try_to_vec::<f32>().unwrap();
        let n = values.len();
        let want = Tensor::<1>::from_data(burn::tensor::TensorData::new(values, [n]), &device.clone().inner());
        assert_close(&format!("grad {name}"), got, want, 1e-3);
        checked += 1;
    }
    assert_eq!(checked, 7, "every gradient in the fixture was compared");
}
