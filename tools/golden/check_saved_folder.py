"""Checks that diffusers loads a component folder written by mapo (`mapo convert`) and that
its tensors equal the original folder's.

  mapo convert unet --model tests/fixtures/tiny-sdxl --out /tmp/unet-copy
  python3 tools/golden/check_saved_folder.py unet tests/fixtures/tiny-sdxl/unet /tmp/unet-copy
"""
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

kind, original, saved = sys.argv[1:4]
cls = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}[kind]
a = cls.from_pretrained(original, torch_dtype=torch.float32).state_dict()
b = cls.from_pretrained(saved, torch_dtype=torch.float32).state_dict()
assert a.keys() == b.keys(), set(a) ^ set(b)
worst = max((a[k] - b[k]).abs().max().item() for k in a)
assert worst == 0.0, f"max difference {worst}"
print(f"OK: diffusers loaded {saved}: {len(a)} tensors identical to {original}")
