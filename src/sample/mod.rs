//! Noise schedules, seeded noise and samplers.

pub mod ddim;
pub mod euler;
pub mod flow_euler;
pub mod flux;
pub mod noise;
pub mod pipeline;
pub mod rollout;
pub mod sampler;
pub mod schedule;
pub mod sd3;
pub mod sde;
pub mod validate;

/// One prompt's token ids as the [1, L] batch a text encoder takes.
pub fn id_row(ids: Vec<i64>, device: &burn::tensor::Device) -> burn::tensor::Tensor<2, burn::tensor::Int> {
    let n = ids.len();
    burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(ids, [1, n]), device)
}
