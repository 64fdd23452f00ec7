"""Completes tests/fixtures/tiny-sdxl as a diffusers StableDiffusionXLPipeline folder
(scheduler config, model_index.json) and records a full generation: prompt encoding with
both tokenizers/encoders, classifier-free guidance 5 with no negative prompt (zero
embeddings), 6 Euler steps, a non-square size, from given initial latents.

Run after the other make_*.py scripts:  OMP_NUM_THREADS=1 python3 tools/golden/make_pipeline.py
"""
import json
import os
import sys

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
root = os.path.join(OUT, "tiny-sdxl")
torch.manual_seed(11)

sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                               num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                               interpolation_type="linear", use_karras_sigmas=False, prediction_type="epsilon")
sched.save_pretrained(os.path.join(root, "scheduler"))
with open(os.path.join(root, "model_index.json"), "w") as f:
    json.dump({"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.30.0",
               "force_zeros_for_empty_prompt": True,
               "scheduler": ["diffusers", "EulerDiscreteScheduler"],
               "text_encoder": ["transformers", "CLIPTextModel"],
               "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
               "tokenizer": ["transformers", "CLIPTokenizer"],
               "tokenizer_2": ["transformers", "CLIPTokenizer"],
               "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"]}, f, indent=1)

pipe = StableDiffusionXLPipeline.from_pretrained(root, torch_dtype=torch.float32)
height, width = 32, 48  # VAE factor 4 here: latents 8 x 12
latents = torch.randn(1, 4, height // 4, width // 4)
prompt = "a photo of a cat, digits 42!"
with torch.no_grad():
    out = pipe(prompt=prompt, num_inference_steps=6, guidance_scale=5.0,
               height=height, width=width, latents=latents.clone(), output_type="latent").images
    pe, npe, ppe, nppe = pipe.encode_prompt(prompt, do_classifier_free_guidance=True)
save_file({"init_latents": latents, "final_latents": out.contiguous(), "prompt_embeds": pe.contiguous(),
           "pooled_prompt_embeds": ppe.contiguous(), "negative_prompt_embeds": npe.contiguous()},
          os.path.join(OUT, "pipeline.safetensors"))
with open(os.path.join(OUT, "pipeline.json"), "w") as f:
    json.dump({"prompt": prompt, "height": height, "width": width, "steps": 6, "guidance": 5.0}, f, indent=1)
print("final latents", out.shape, out.abs().max().item(), "neg zero:", npe.abs().max().item())
