"""Checks that a kohya-layout FLUX LoRA written by mapo loads in diffusers (manual: CI has no
torch). Loads the file with FluxPipeline.load_lora_weights into tests/fixtures/tiny-flux-dev's
transformer and compares the output on flux_transformer_cases' dev.case0 with the output
mapo computes for the same file (`mapo forward transformer --lora FILE`, written to OUT).

diffusers 0.42 hard-codes FLUX.1's single-block linear1 split ([3072, 3072, 3072, 12288]);
the tiny model's [16, 16, 16, 64] is patched in, as make_flux_transformer.py does. diffusers
drops the modules outside the blocks (final_layer_*, img_in, txt_in, time_in, vector_in,
guidance_in) when it converts a kohya FLUX file: the script reports which the file has.

Measured 2026-12-05 (diffusers 0.42.1): flux_kohya.safetensors read and written again by
mapo: 1.4e-7; diffusers' own PEFT file (flux_peft) without its top-level proj_out adapter,
written as kohya by mapo (q/k/v and linear1 fused block-diagonally): 2.5e-7; with it, 0.95
(diffusers drops final_layer_linear; mapo and ComfyUI apply it; mapo warns when it writes one).

  target/release/mapo lora convert --in tests/fixtures/lora/flux_peft.safetensors --to kohya --out /tmp/k.safetensors
  (write dev.case0's inputs, then) target/release/mapo forward transformer --model tests/fixtures/tiny-flux-dev \
      --inputs IN --out /tmp/mapo_out.safetensors --lora /tmp/k.safetensors
  OMP_NUM_THREADS=1 python3 tools/golden/check_flux_kohya.py /tmp/k.safetensors /tmp/mapo_out.safetensors
"""
import inspect
import sys

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from diffusers.loaders import lora_conversion_utils, lora_pipeline
from safetensors import safe_open

LORA, MAPO_OUT = sys.argv[1], sys.argv[2]
MODEL = "tests/fixtures/tiny-flux-dev/transformer"

transformer = FluxTransformer2DModel.from_pretrained(MODEL, torch_dtype=torch.float32).eval()
inner = transformer.config.num_attention_heads * transformer.config.attention_head_dim
src = inspect.getsource(lora_conversion_utils._convert_kohya_flux_lora_to_diffusers)
LIT = "dims=[3072, 3072, 3072, 12288]"
assert src.count(LIT) == 1
ns = dict(vars(lora_conversion_utils))
exec(compile(src.replace(LIT, f"dims=[{inner}, {inner}, {inner}, {4 * inner}]"), "<patched>", "exec"), ns)
lora_conversion_utils._convert_kohya_flux_lora_to_diffusers = ns["_convert_kohya_flux_lora_to_diffusers"]
lora_pipeline._convert_kohya_flux_lora_to_diffusers = ns["_convert_kohya_flux_lora_to_diffusers"]

with safe_open(LORA, "pt") as f:
    modules = sorted({k.rsplit(".", 2)[0] for k in f.keys() if k.endswith(".lora_down.weight")})
outer = [m for m in modules if not ("double_blocks" in m or "single_blocks" in m)]
print(f"{len(modules)} kohya modules; outside the blocks (diffusers drops these): {outer}")

pipe = FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                    tokenizer_2=None, transformer=transformer)
pipe.load_lora_weights(LORA)
with safe_open("tests/fixtures/flux_transformer_cases.safetensors", "pt") as f:
    x = {k: f.get_tensor(f"dev.case0.{k}") for k in ["hidden_states", "encoder_hidden_states",
                                                     "pooled_projections", "timestep", "img_ids",
                                                     "txt_ids", "guidance"]}
with torch.no_grad():
    out = pipe.transformer(**x).sample
with safe_open(MAPO_OUT, "pt") as f:
    mapo = f.get_tensor("sample")
err = ((out - mapo).abs().max() / out.abs().max()).item()
print(f"diffusers' load_lora_weights vs mapo: {err:.2e} relative")
sys.exit(0 if err < 1e-5 else 1)
