"""Euler sampling fixtures: diffusers' EulerDiscreteScheduler (SDXL settings) timesteps and
sigmas for several step counts, and a 6-step guided sampling loop of the tiny UNet from
given initial latents, as StableDiffusionXLPipeline runs it (zero negative embeddings).

Run from the repo root after make_unet_vae.py:  OMP_NUM_THREADS=1 python3 tools/golden/make_sampling.py
"""
import os
import sys

import torch
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
torch.manual_seed(7)


def scheduler():
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                                  interpolation_type="linear", use_karras_sigmas=False, prediction_type="epsilon")


out = {}
for n in [1, 6, 20, 25, 30, 50]:
    s = scheduler()
    s.set_timesteps(n)
    out[f"steps{n}.timesteps"] = s.timesteps.float()
    out[f"steps{n}.sigmas"] = s.sigmas.float()
    out[f"steps{n}.init_noise_sigma"] = torch.tensor([float(s.init_noise_sigma)])

unet = UNet2DConditionModel.from_pretrained(os.path.join(OUT, "tiny-sdxl", "unet"), torch_dtype=torch.float32).eval()
k, guidance = 2, 5.0
noise = torch.randn(k, 4, 8, 12)
ehs = torch.randn(k, 77, 48)
text = torch.randn(k, 32)
time_ids = torch.tensor([[64.0, 96.0, 0.0, 0.0, 64.0, 96.0]] * k)
cond = {"text_embeds": torch.cat([torch.zeros_like(text), text]), "time_ids": torch.cat([time_ids, time_ids])}
context = torch.cat([torch.zeros_like(ehs), ehs])


def guided_loop(sched, steps=6):
    """The StableDiffusionXLPipeline denoising loop (CFG 5, zero negative), 6 steps."""
    sched.set_timesteps(steps)
    x = noise * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(sched.scale_model_input(torch.cat([x] * 2), t), t, context, added_cond_kwargs=cond).sample
            u, c = eps.chunk(2)
            x = sched.step(u + guidance * (c - u), t, x).prev_sample
    return x


out["sample.latents"] = guided_loop(scheduler())

# DDIM from the same scheduler config, as DDIMScheduler.from_config(pipe.scheduler.config)
# gives it (set_alpha_to_one and clip_sample keep DDIM's defaults, True).
from diffusers import DDIMScheduler

for spacing in ["leading", "trailing", "linspace"]:
    for n in [1, 6, 20, 50]:
        e = scheduler()
        e.register_to_config(timestep_spacing=spacing)
        e.set_timesteps(n)
        out[f"euler_{spacing}{n}.timesteps"] = e.timesteps.float()
        out[f"euler_{spacing}{n}.sigmas"] = e.sigmas.float()
        d = DDIMScheduler.from_config(e.config)
        d.set_timesteps(n)
        out[f"ddim_{spacing}{n}.timesteps"] = d.timesteps.float()
out["ddim.latents"] = guided_loop(DDIMScheduler.from_config(scheduler().config))
# SDXL's own scheduler_config.json sets both flags false.
out["ddim_sdxl.latents"] = guided_loop(DDIMScheduler.from_config(scheduler().config, clip_sample=False, set_alpha_to_one=False))
# Euler with "linspace" spacing: fractional timesteps reach the UNet as floats.
e = scheduler()
e.register_to_config(timestep_spacing="linspace")
out["euler_linspace.latents"] = guided_loop(e)
out.update({"sample.noise": noise, "sample.encoder_hidden_states": ehs, "sample.text_embeds": text,
            "sample.time_ids": time_ids})
save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "euler.safetensors"))
print("euler final latents max", out["sample.latents"].abs().max().item())
