"""Parity of a mapo binary on any backend (CUDA on the GPU machine, which has PyTorch but
no Rust toolchain), through `mapo forward` on the committed fixtures.

  python3 tools/gpu/check_backend.py ./mapo cuda f32     # tolerance 1e-4 (relative to max |out|)
  python3 tools/gpu/check_backend.py ./mapo cuda bf16    # reported, tolerance 3e-2

bf16 keeps 8 mantissa bits (relative rounding 2^-9 ≈ 2e-3 per operation); through ~60
layers of residual blocks errors accumulate to ~1e-2 of the output's magnitude, hence 3e-2.
"""
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

binary, device, dtype = sys.argv[1:4]
tol = {"f32": 1e-4, "bf16": 3e-2, "f16": 3e-2}[dtype]
model = "tests/fixtures/tiny-sdxl"
worst = 0.0


def run(component, inputs):
    global worst
    with tempfile.TemporaryDirectory() as d:
        save_file({k: v.contiguous() for k, v in inputs.items()}, f"{d}/in.safetensors")
        subprocess.run([binary, "forward", component, "--model", model, "--inputs", f"{d}/in.safetensors",
                        "--out", f"{d}/out.safetensors", "--device", device, "--dtype", dtype], check=True)
        return load_file(f"{d}/out.safetensors")


def compare(what, got, want):
    global worst
    err = ((got - want).abs().max() / want.abs().max()).item()
    worst = max(worst, err)
    print(f"{what}: {err:.2e} {'ok' if err <= tol else 'FAIL'}")


cases = load_file("tests/fixtures/unet_cases.safetensors")
for c in ["case0", "case1", "case2"]:
    names = ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    out = run("unet", {n: cases[f"{c}.{n}"] for n in names})
    compare(f"unet {c}", out["sample"], cases[f"{c}.out"])
vae = load_file("tests/fixtures/vae_cases.safetensors")
for c in ["case0", "case1"]:
    enc = run("vae-encode", {"sample": vae[f"{c}.sample"]})
    compare(f"vae-encode {c} mean", enc["mean"], vae[f"{c}.mean"])
    dec = run("vae-decode", {"latents": vae[f"{c}.latents"]})
    compare(f"vae-decode {c}", dec["sample"], vae[f"{c}.decoded"])
print(f"{device} {dtype}: worst {worst:.2e}, tolerance {tol:.0e}")
sys.exit(0 if worst <= tol else 1)
