"""SD3's 16-channel VAE layout on a tiny AutoencoderKL (tests/vae_parity.rs).

SD3 / SD3.5 (and FLUX) use an AutoencoderKL with 16 latent channels and no quant convs
(`use_quant_conv = use_post_quant_conv = False`), latents normalised with a shift and a
scale (`(z - shift_factor) * scaling_factor`). This writes a tiny one with SD3's config
flags and random weights to tests/fixtures/tiny-sd35/vae/ (f32; the VAE of the tiny
SD3.5 pipeline folder, see make_sd3_pipeline.py) and its encode (mean, logvar) and decode
outputs to tests/fixtures/sd3_vae_cases.safetensors.

Run: OMP_NUM_THREADS=1 python tools/golden/make_sd3_vae.py
"""
import os

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")
CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[16, 32, 32],
    layers_per_block=1,
    latent_channels=16,
    norm_num_groups=8,
    sample_size=32,
    # SD3's own values (stabilityai/stable-diffusion-3-medium-diffusers, vae/config.json).
    scaling_factor=1.5305,
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
)

torch.manual_seed(0)
vae = AutoencoderKL(**CONFIG)
with torch.no_grad():
    for name, p in vae.named_parameters():
        if ".norm" in name and name.endswith(".weight") or name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn_like(p))
        else:
            p.copy_(0.4 * torch.randn_like(p) / max(1.0, p[0].numel() ** 0.5))
vae.eval()
vae.save_pretrained(os.path.join(OUT, "tiny-sd35", "vae"))
cases = {}
for i, (b, h, w) in enumerate([(2, 32, 24), (1, 16, 16)]):
    x = torch.rand(b, 3, h, w) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        z = torch.randn(b, 16, h // 4, w // 4)
        dec = vae.decode(z).sample
    cases.update({f"case{i}.sample": x, f"case{i}.mean": dist.mean, f"case{i}.logvar": dist.logvar,
                  f"case{i}.latents": z, f"case{i}.decoded": dec})
save_file({k: v.contiguous() for k, v in cases.items()}, os.path.join(OUT, "sd3_vae_cases.safetensors"))
print("wrote tiny-sd35/vae and sd3_vae_cases.safetensors")
