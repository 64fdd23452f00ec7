"""LoRA files in both layouts, and what diffusers computes with them (tests/fixtures/lora/).

  peft.safetensors    diffusers' own save_lora_weights of a PEFT LoRA on the tiny UNet:
                      rank 4, lora_alpha 8, random A and B, one layer at rank 2 / alpha 6
                      (rank_pattern / alpha_pattern); the adapter config in the metadata.
  kohya.safetensors   the same adapters under the key names sd-scripts writes for SDXL
                      (sgm blocks, lora_down/lora_up, one alpha for all, scale unfolded),
                      made here from sd-scripts' conventions, independently of mapo.
  expected.safetensors  the tiny UNet's output on unet_cases' case0: `base`, and with each
                      file loaded by diffusers' StableDiffusionXLPipeline.load_lora_weights
                      (`peft`, `kohya`); with --mapo, also `mapo_kohya`: diffusers' output
                      with the file `mapo lora convert --to kohya` made from peft.safetensors
                      (kept as mapo_kohya.safetensors, so the Rust test can check that mapo
                      still writes exactly what diffusers was shown).

Run from the repo root:
  OMP_NUM_THREADS=1 python3 tools/golden/make_lora_formats.py [--mapo target/release/mapo]
"""
import json
import os
import subprocess
import sys

import torch
from diffusers import StableDiffusionXLPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

OUT = "tests/fixtures/lora"
MODEL = "tests/fixtures/tiny-sdxl"
mapo = sys.argv[sys.argv.index("--mapo") + 1] if "--mapo" in sys.argv else None
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(5)
# Adapters of std 0.2: larger ones make the random tiny UNet's attention logits so large that
# 1e-7 rounding differences grow to percents at the output (checked: 0.5 gives 7e-2 between
# diffusers' own fused and unfused forwards).

cases = load_file("tests/fixtures/unet_cases.safetensors")
inputs = {k.split(".", 1)[1]: v for k, v in cases.items() if k.startswith("case0.") and not k.endswith(".out")}
save_file(inputs, f"{OUT}/inputs.safetensors")


def load_pipe():
    return StableDiffusionXLPipeline.from_pretrained(MODEL, torch_dtype=torch.float32)


def run(unet):
    with torch.no_grad():
        return unet(inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"],
                    added_cond_kwargs={"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}).sample


pipe = load_pipe()
expected = {"base": run(pipe.unet)}

# A PEFT LoRA the way diffusers' training scripts make and save one.
odd = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                    target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                    rank_pattern={odd: 2}, alpha_pattern={odd: 6})
pipe.unet.add_adapter(config)
with torch.no_grad():
    for name, p in pipe.unet.named_parameters():
        if "lora_" in name:
            p.copy_(torch.randn_like(p) * 0.2)
layers = get_peft_model_state_dict(pipe.unet)
StableDiffusionXLPipeline.save_lora_weights(OUT, unet_lora_layers=layers, weight_name="peft.safetensors",
                                            unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict())
direct = run(pipe.unet)


def with_lora(file):
    p = load_pipe()
    p.load_lora_weights(OUT, weight_name=file)
    return run(p.unet)


expected["peft"] = with_lora("peft.safetensors")
err = ((expected["peft"] - direct).abs().max() / direct.abs().max()).item()
print(f"peft file through load_lora_weights vs the adapters in memory: {err:.2e}")
assert err < 1e-6

# sd-scripts' SDXL key names: the original (sgm) UNet's blocks. layers_per_block 2:
# down block i layer j = input_blocks.{1 + 3i + j}.1, up block i layer j = output_blocks.{3i + j}.1.
L = 2


def kohya_module(layer):
    parts = layer.split(".")
    block, i, kind, j, rest = parts[0], int(parts[1]), parts[2], int(parts[3]), parts[4:]
    assert kind == "attentions", layer
    if block == "down_blocks":
        sgm = ["input_blocks", str(1 + i * (L + 1) + j), "1"]
    elif block == "up_blocks":
        sgm = ["output_blocks", str(i * (L + 1) + j), "1"]
    else:
        raise ValueError(layer)
    return "lora_unet_" + "_".join(sgm + rest)


def kohya_mid(layer):
    return "lora_unet_" + "_".join(["middle_block", "1"] + layer.split(".")[3:])


peft = load_file(f"{OUT}/peft.safetensors")
kohya = {}
for key in sorted(peft):
    if not key.endswith(".lora_A.weight"):
        continue
    layer = key[len("unet."):-len(".lora_A.weight")]
    module = kohya_mid(layer) if layer.startswith("mid_block") else kohya_module(layer)
    rank = peft[key].shape[0]
    # One alpha for all modules, as sd-scripts writes (network_alpha): the rank-2 layer's
    # peft scale 6/2 = 3 becomes 8/2 = 4 with lora_up scaled by 3/4. (diffusers 0.42 would
    # ignore a per-module alpha that differs from the most common one.)
    up = peft[key.replace("lora_A", "lora_B")]
    kohya[f"{module}.lora_down.weight"] = peft[key]
    kohya[f"{module}.lora_up.weight"] = up * 0.75 if layer == odd else up
    kohya[f"{module}.alpha"] = torch.tensor(8.0)
save_file(kohya, f"{OUT}/kohya.safetensors",
          metadata={"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "8"})
expected["kohya"] = with_lora("kohya.safetensors")
err = ((expected["kohya"] - expected["peft"]).abs().max() / expected["peft"].abs().max()).item()
print(f"{len(kohya) // 3} kohya modules through load_lora_weights vs the peft file: {err:.2e}")
assert err < 1e-5

if mapo:
    subprocess.run([mapo, "lora", "convert", "--in", f"{OUT}/peft.safetensors", "--to", "kohya",
                    "--out", f"{OUT}/mapo_kohya.safetensors"], check=True)
    expected["mapo_kohya"] = with_lora("mapo_kohya.safetensors")
    err = ((expected["mapo_kohya"] - expected["peft"]).abs().max() / expected["peft"].abs().max()).item()
    print(f"mapo's kohya file through load_lora_weights vs the peft file: {err:.2e}")
    # Not 0: mapo folds alpha/r into lora_up (3 for the odd layer), which rounds, and
    # diffusers' own peft and kohya paths differ by ~1e-6 already (printed above).
    assert err < 1e-5
    # The same module names as the sd-scripts-style file above, and the same update.
    ours = load_file(f"{OUT}/mapo_kohya.safetensors")
    assert set(ours) == set(kohya)
    for k, v in kohya.items():
        if k.endswith(".lora_up.weight"):
            # Both give every module scale·up: (alpha / r)·up.
            m = k[:-len(".lora_up.weight")]
            r = v.shape[1]
            a = v * kohya[f"{m}.alpha"] / r
            b = ours[k] * ours[f"{m}.alpha"] / r
            assert torch.allclose(a, b, rtol=1e-6, atol=0), k

change = ((expected["peft"] - expected["base"]).abs().max() / expected["base"].abs().max()).item()
print(f"the LoRA changes the output by {change:.2e} (relative)")
assert change > 1e-3
save_file({k: v.contiguous() for k, v in expected.items()}, f"{OUT}/expected.safetensors")
print(json.dumps({k: list(v.shape) for k, v in expected.items()}))
