"""Checks a finished SD3 LoRA run in diffusers (manual; the Rust tests check the same
numbers between mapo's own outputs): the merged `transformer/` folder loads with
SD3Transformer2DModel.from_pretrained (its position table included) and equals the base
pipeline with the run's `pytorch_lora_weights.safetensors` loaded by load_lora_weights.

Run: python tools/golden/check_sd3_export.py RUN_DIR   (after a `mapo train` on tests/fixtures/tiny-sd35)
Measured 2026-12-05: 1.3e-7 relative (a 4-step MaPO LoRA run, rank 2, that moved the output by 2.6%).
"""
import sys, torch
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from safetensors.torch import load_file
run = sys.argv[1]
case = load_file("tests/fixtures/sd3_transformer_cases.safetensors")
inp = {k: case[f"sd35.case0.{k}"] for k in ["hidden_states", "encoder_hidden_states", "pooled_projections", "timestep"]}
merged = SD3Transformer2DModel.from_pretrained(f"{run}/transformer").eval()
pipe = StableDiffusion3Pipeline.from_pretrained("tests/fixtures/tiny-sd35", torch_dtype=torch.float32)
pipe.load_lora_weights(f"{run}/pytorch_lora_weights.safetensors")
with torch.no_grad():
    a = merged(**inp).sample
    b = pipe.transformer(**inp).sample
    base = SD3Transformer2DModel.from_pretrained("tests/fixtures/tiny-sd35/transformer").eval()(**inp).sample
print("merged vs diffusers+lora:", ((a-b).abs().max()/b.abs().max()).item(), " lora moved the output by", ((b-base).abs().max()/base.abs().max()).item())
