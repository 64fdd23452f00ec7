//! The built-in experiment's model: the SDXL UNet code with a tiny config working directly
//! on 16×16 RGB images (no VAE), conditioned through the CLIP text-encoder code with a tiny
//! config and a word-level vocabulary (`words`). Its pretraining and the experiment wiring
//! live in `experiment::toy`.

use std::path::Path;

use anyhow::Result;
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use super::words::{SEQ_LEN, tokenize, vocabulary};
use crate::models::clip::ClipTextModel;

/// Image side in pixels; the UNet's "latents" are the images themselves.
pub const SIZE: usize = 16;

pub fn unet_config() -> serde_json::Value {
    serde_json::from_str(include_str!("../models/presets/toy_unet.json")).expect("valid preset")
}

pub fn text_encoder_config() -> serde_json::Value {
    let vocab = vocabulary().len();
    serde_json::json!({
        "architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model",
        "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": SEQ_LEN, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5, "projection_dim": 32, "eos_token_id": vocab - 1, "bos_token_id": 1,
        "pad_token_id": 0
    })
}

/// The conditioning of captions: the tiny text encoder's penultimate hidden states and
/// projected pooled output, and SDXL's `time_ids` for an uncropped SIZE² image.
pub struct Conditioner {
    encoder: ClipTextModel,
    vocab: Vec<String>,
}

pub struct Conditioning {
    pub context: Tensor<3>,
    pub text_embeds: Tensor<2>,
    pub time_ids: Tensor<2>,
}

impl Conditioner {
    pub fn load(reference: &Path, device: &Device) -> Result<Self> {
        let (encoder, _) = ClipTextModel::from_dir(&reference.join("text_encoder"), device, DType::F32, true)?;
        Ok(Self { encoder, vocab: vocabulary() })
    }

    /// `None` captions are the empty prompt: zero embeddings, as SDXL's negative.
    pub fn encode(&self, captions: &[Option<String>], device: &Device) -> Result<Conditioning> {
        let n = captions.len();
        let mut ids = Vec::with_capacity(n * SEQ_LEN);
        for c in captions {
            ids.extend(tokenize(&self.vocab, c.as_deref().unwrap_or(""))?);
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [n, SEQ_LEN]), device);
        let out = self.encoder.forward(ids);
        let keep: Vec<f32> = captions.iter().map(|c| if c.is_some() { 1.0 } else { 0.0 }).collect();
        let keep = Tensor::<1>::from_data(TensorData::new(keep, [n]), device);
        let context = out.penultimate.clone() * keep.clone().reshape([n, 1, 1]);
        let text_embeds = out.text_embeds.expect("projection") * keep.reshape([n, 1]);
        let s = SIZE as f32;
        let time_ids = Tensor::<1>::from_data(TensorData::new(vec![s, s, 0.0, 0.0, s, s], [6]), device)
            .reshape([1, 6])
            .repeat_dim(0, n);
        Ok(Conditioning { context, text_embeds, time_ids })
    }
}
