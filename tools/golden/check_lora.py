"""Checks a LoRA file written by `mapo train` ([lora] runs) with diffusers + PEFT: the base
UNet with the adapters loaded by diffusers gives the same output as mapo's merged UNet.

  mapo train --config experiments/tiny-mapo-lora.toml
  python3 tools/golden/check_lora.py tests/fixtures/tiny-sdxl/unet runs/tiny-mapo-lora
"""
import sys

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file

base_dir, run = sys.argv[1:3]
cases = load_file("tests/fixtures/unet_cases.safetensors")
args = lambda: (cases["case0.sample"], cases["case0.timestep"], cases["case0.encoder_hidden_states"])
cond = {"text_embeds": cases["case0.text_embeds"], "time_ids": cases["case0.time_ids"]}

unet = UNet2DConditionModel.from_pretrained(base_dir, torch_dtype=torch.float32).eval()
with torch.no_grad():
    plain = unet(*args(), added_cond_kwargs=cond).sample
unet.load_lora_adapter(f"{run}/pytorch_lora_weights.safetensors", prefix="unet", adapter_name="mapo")
merged = UNet2DConditionModel.from_pretrained(f"{run}/unet", torch_dtype=torch.float32).eval()
with torch.no_grad():
    with_lora = unet(*args(), added_cond_kwargs=cond).sample
    from_merged = merged(*args(), added_cond_kwargs=cond).sample
n = len(load_file(f"{run}/pytorch_lora_weights.safetensors")) // 2
change = (with_lora - plain).abs().max().item()
err = (with_lora - from_merged).abs().max().item() / with_lora.abs().max().item()
print(f"{n} adapters; LoRA changes the output by {change:.3e}; diffusers+PEFT vs mapo merged: {err:.2e} relative")
assert change > 0 and err < 1e-5
print("OK")
