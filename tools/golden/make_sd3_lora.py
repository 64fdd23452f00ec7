"""A PEFT LoRA on the tiny SD3.5 transformer, and what diffusers computes with it (tests/fixtures/lora/).

  sd35_peft.safetensors  diffusers' own StableDiffusion3Pipeline.save_lora_weights of a PEFT
                         LoRA on tests/fixtures/tiny-sd35/transformer: rank 4, lora_alpha 8,
                         random A and B, target_modules to_q, to_k, to_v, to_out.0, add_q_proj,
                         add_k_proj, add_v_proj, to_add_out (so the dual-attention `attn2`
                         projections of blocks 0 and 1 are matched too; block 2 is
                         context_pre_only, so it has no attn.to_add_out), one layer at rank 2 /
                         alpha 6 (rank_pattern / alpha_pattern). Keys
                         `transformer.<module>.lora_A.weight` / `.lora_B.weight`; the adapter
                         config is the JSON under the metadata key `lora_adapter_metadata`,
                         its keys prefixed `transformer.` (target_modules written sorted, so
                         the file does not depend on PYTHONHASHSEED; the header's `__metadata__`
                         entries rewritten in sorted order, which safetensors leaves to chance).
  sd35_expected.safetensors  on the inputs of sd3_transformer_cases' sd35.case0: `base`, the
                         transformer's output without LoRA (asserted equal to sd35.case0.sample
                         to 1e-6 relative: ~1e-7 rounding from the machine that made it),
                         and `peft`, its output after StableDiffusion3Pipeline.load_lora_weights
                         of sd35_peft.safetensors into a freshly loaded pipeline (asserted equal,
                         to 1e-6, to the output of the in-memory adapters that were saved).

Run from the repo root:
  OMP_NUM_THREADS=1 python3 tools/golden/make_sd3_lora.py
"""
import json
import os
import struct

import torch
from diffusers import StableDiffusion3Pipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

OUT = "tests/fixtures/lora"
MODEL = "tests/fixtures/tiny-sd35"
WEIGHTS = "sd35_peft.safetensors"
os.makedirs(OUT, exist_ok=True)
torch.use_deterministic_algorithms(True)
torch.manual_seed(7)
# Adapters of std 0.2 (as for the SDXL UNet in make_lora_formats.py): enough to change the
# tiny transformer's output by well over 5%, small enough that rounding stays at ~1e-7.
STD = 0.2

cases = load_file("tests/fixtures/sd3_transformer_cases.safetensors")
P = "sd35.case0."
inputs = {k: cases[P + k] for k in ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")}


def load_pipe():
    return StableDiffusion3Pipeline.from_pretrained(MODEL, torch_dtype=torch.float32)


def run(transformer):
    with torch.no_grad():
        return transformer(**inputs).sample


pipe = load_pipe()
expected = {"base": run(pipe.transformer)}
# Not bit-equal here: make_sd3_transformer.py's own model, rebuilt in this venv, differs from the
# stored sample by the same ~1e-7 (a different machine's float rounding), so compare to 1e-6.
err = ((expected["base"] - cases[P + "sample"]).abs().max() / cases[P + "sample"].abs().max()).item()
print(f"base vs sd35.case0.sample: {err:.2e} (relative)")
assert err < 1e-6, "base differs from sd35.case0.sample"

# A PEFT LoRA the way diffusers' training scripts (train_dreambooth_lora_sd3.py) make and save one.
odd = "transformer_blocks.1.attn.to_k"
targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets,
                    rank_pattern={odd: 2}, alpha_pattern={odd: 6})
pipe.transformer.add_adapter(config)
with torch.no_grad():
    for name, p in sorted(pipe.transformer.named_parameters()):
        if "lora_" in name:
            p.copy_(torch.randn_like(p) * STD)
layers = get_peft_model_state_dict(pipe.transformer)
meta = pipe.transformer.peft_config["default"].to_dict()
# to_dict keeps target_modules a set, which diffusers turns into a list in set order (string
# hashes: differs from run to run); a sorted list makes the file reproducible.
meta["target_modules"] = sorted(meta["target_modules"])
StableDiffusion3Pipeline.save_lora_weights(OUT, transformer_lora_layers=layers, weight_name=WEIGHTS,
                                           transformer_lora_adapter_metadata=meta)
direct = run(pipe.transformer)


def sort_metadata(path):
    """Rewrites the file's header with `__metadata__`'s entries in sorted order (in place).

    safetensors keeps the metadata in a Rust HashMap, so `format` and `lora_adapter_metadata`
    come out in either order from run to run; nothing else in the file changes.
    """
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    text = data[8:8 + n].decode("utf-8")
    header = json.loads(text)
    dump = lambda h: json.dumps(h, separators=(",", ":"), ensure_ascii=False)
    # Python writes the header exactly as safetensors did (then the padding to 8 bytes).
    assert dump(header) == text.rstrip(" "), "header not in safetensors' own layout"
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new = dump(header).encode("utf-8")
    new += b" " * (n - len(new))
    assert len(new) == n
    with open(path, "wb") as f:
        f.write(data[:8] + new + data[8 + n:])


sort_metadata(f"{OUT}/{WEIGHTS}")

with safe_open(f"{OUT}/{WEIGHTS}", "pt") as f:
    file_meta = f.metadata()
    saved = {k: f.get_tensor(k) for k in f.keys()}
print("metadata keys:", sorted(file_meta))
print("lora_adapter_metadata:")
print(file_meta["lora_adapter_metadata"])
modules = sorted(k[:-len(".lora_A.weight")] for k in saved if k.endswith(".lora_A.weight"))
assert len(saved) == 2 * len(modules)
print(f"{len(saved)} tensors, {len(modules)} adapted modules:")
for k in sorted(saved):
    print(f"  {k} {list(saved[k].shape)}")
assert saved[f"transformer.{odd}.lora_A.weight"].shape[0] == 2
assert any(".attn2." in m for m in modules)
assert "transformer.transformer_blocks.2.attn.to_add_out" not in modules

pipe2 = load_pipe()
pipe2.load_lora_weights(OUT, weight_name=WEIGHTS)
expected["peft"] = run(pipe2.transformer)
err = ((expected["peft"] - direct).abs().max() / direct.abs().max()).item()
print(f"peft file through load_lora_weights vs the adapters in memory: {err:.2e}")
assert err < 1e-6

change = ((expected["peft"] - expected["base"]).norm() / expected["base"].norm()).item()
change_max = ((expected["peft"] - expected["base"]).abs().max() / expected["base"].abs().max()).item()
print(f"the LoRA changes the output by {change:.3f} (relative L2), {change_max:.3f} (max abs / max abs)")
assert change >= 0.05
save_file({k: v.contiguous() for k, v in expected.items()}, f"{OUT}/sd35_expected.safetensors")
print(json.dumps({k: list(v.shape) for k, v in expected.items()}))
