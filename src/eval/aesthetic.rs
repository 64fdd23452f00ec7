//! The LAION improved aesthetic predictor (`sac+logos+ava1-l14-linearMSE.pth`): a stack of
//! linear layers (`layers.{0,2,4,6,7}`, dropouts between them, no activations) on the
//! L2-normalised CLIP ViT-L/14 image embedding. `score = mlp(x)`.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::preprocess::ClipImageProcessor;
use super::resize::Rgb8;
use super::scorer::Scorer;
use crate::models::clip::model::ClipModel;
use crate::models::pth::PthFile;

pub struct AestheticScorer {
    clip: ClipModel,
    processor: ClipImageProcessor,
    /// (weight [out, in], bias [out]) in order.
    layers: Vec<(Tensor<2>, Tensor<1>)>,
    device: Device,
}

impl AestheticScorer {
    /// `mlp`: the predictor's `.pth` state dict; `clip`: the CLIPModel folder whose image
    /// embeddings it was trained on.
    pub fn load(mlp: &Path, clip: &Path, device: &Device) -> Result<Self> {
        let (model, config) = ClipModel::from_dir(clip, device, DType::F32)?;
        let processor = ClipImageProcessor::from_dir(clip)?;
        let file = PthFile::open(mlp, None)?;
        let mut indices: Vec<usize> = file
            .names()
            .iter()
            .filter_map(|n| n.strip_prefix("layers.")?.strip_suffix(".weight")?.parse().ok())
            .collect();
        indices.sort_unstable();
        ensure!(!indices.is_empty(), "{}: no layers.N.weight tensors (not an aesthetic MLP?)", mlp.display());
        let mut width = config.projection_dim;
        let mut layers = Vec::new();
        for i in indices {
            // Shapes first, from the pickle alone: a wrong one is refused before any read.
            let shape = |n: String| {
                let s = file.shape(&n).map(<[usize]>::to_vec);
                s.with_context(|| format!("{}: no {n}", mlp.display()))
            };
            let (ws, bs) = (shape(format!("layers.{i}.weight"))?, shape(format!("layers.{i}.bias"))?);
            ensure!(
                ws.len() == 2 && ws[1] == width && bs == [ws[0]],
                "{}: layers.{i} has weight {ws:?} and bias {bs:?}; expected [_, {width}] and [_] (the input is {} wide)",
                mlp.display(),
                if layers.is_empty() {
                    "the CLIP embedding, which is"
                } else {
                    "the previous layer's output, which is"
                }
            );
            let (w, _) = file.f32(&format!("layers.{i}.weight"))?;
            let (b, _) = file.f32(&format!("layers.{i}.bias"))?;
            width = ws[0];
            layers.push((
                Tensor::<2>::from_data(TensorData::new(w, [ws[0], ws[1]]), device),
                Tensor::<1>::from_data(TensorData::new(b, [bs[0]]), device),
            ));
        }
        ensure!(width == 1, "{}: the last layer gives {width} values, expected one score", mlp.display());
        Ok(Self { clip: model, processor, layers, device: device.clone() })
    }
}

impl Scorer for AestheticScorer {
    fn name(&self) -> &'static str {
        "aesthetic"
    }

    fn needs_text(&self) -> bool {
        false
    }

    fn shrink(&self, image: Rgb8) -> Result<Rgb8> {
        self.processor.geometry(&image)
    }

    fn score(&self, images: &[Rgb8], _prompts: &[String]) -> Result<Vec<f64>> {
        let n = images.len();
        if n == 0 {
            return Ok(vec![]);
        }
        let x = self.processor.batch(images, &self.device)?;
        let e = self.clip.image_embeds(x);
        let mut h = e.clone().div(e.square().sum_dim(1).sqrt());
        for (w, b) in &self.layers {
            h = h.matmul(w.clone().transpose()) + b.clone().unsqueeze();
        }
        let v = h.into_data().convert::<f32>().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(v.into_iter().map(f64::from).collect())
    }
}
