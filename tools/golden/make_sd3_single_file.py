"""An SD3.5 single file in Stability's MMDiT layout (as sd3.5_medium.safetensors ships), made
from tests/fixtures/tiny-sd35 and proven with diffusers' `from_single_file`:
tests/fixtures/tiny-sd35-single.safetensors (f32).

  model.diffusion_model.*   the transformer, the inverse of diffusers'
        `convert_sd3_transformer_checkpoint_to_diffusers`: `pos_embed`, `x_embedder.proj`,
        `t_embedder.mlp.{0,2}`, `y_embedder.mlp.{0,2}`, `context_embedder`,
        `joint_blocks.N.{x_block,context_block}.attn.qkv` = cat(q, k, v), `.attn.ln_q/ln_k`,
        `.attn.proj`, `x_block.attn2.*` (MMDiT-X), `.adaLN_modulation.1`, `.mlp.fc1/fc2`;
        the last block's context modulation and `final_layer.adaLN_modulation.1` with
        diffusers' (scale, shift) halves swapped to (shift, scale); `final_layer.linear`.
  first_stage_model.*       the VAE in ldm names (make_single_file.py's config-aware converter).
  text_encoders.clip_l.transformer.*, clip_g, t5xxl  the three text encoders in transformers'
        names (CLIP with `text_model.`; T5's `shared.weight` and `encoder.*`). CLIP L's
        `text_projection` is left out, as SD3 files do: diffusers (and ComfyUI) take it as the
        identity.

The check loads the file with StableDiffusion3Pipeline.from_single_file from a folder of
configs and tokenizers only and compares every tensor of the five components with
from_pretrained of the folder: all equal, but CLIP L's projection, which is the identity.

Run from the repo root: OMP_NUM_THREADS=1 python3 tools/golden/make_sd3_single_file.py
"""
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_single_file import convert_vae, load_component  # noqa: E402

FOLDER = "tests/fixtures/tiny-sd35"
OUT = "tests/fixtures/tiny-sd35-single.safetensors"
P = "model.diffusion_model."


def swap(t):
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a])


def transformer(sd, cfg):
    n = cfg["num_layers"]
    out = {P + "pos_embed": sd["pos_embed.pos_embed"]}
    outer = {"pos_embed.proj": "x_embedder.proj", "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
             "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
             "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
             "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "context_embedder": "context_embedder",
             "proj_out": "final_layer.linear"}
    for d, m in outer.items():
        for p in ("weight", "bias"):
            out[f"{P}{m}.{p}"] = sd[f"{d}.{p}"]
    for p in ("weight", "bias"):
        out[f"{P}final_layer.adaLN_modulation.1.{p}"] = swap(sd[f"norm_out.linear.{p}"])
    for i in range(n):
        s, o = f"transformer_blocks.{i}.", f"{P}joint_blocks.{i}."
        last = i == n - 1
        for p in ("weight", "bias"):
            out[o + f"x_block.attn.qkv.{p}"] = torch.cat([sd[s + f"attn.to_{x}.{p}"] for x in "qkv"])
            out[o + f"context_block.attn.qkv.{p}"] = torch.cat([sd[s + f"attn.add_{x}_proj.{p}"] for x in "qkv"])
            out[o + f"x_block.attn.proj.{p}"] = sd[s + f"attn.to_out.0.{p}"]
            out[o + f"x_block.adaLN_modulation.1.{p}"] = sd[s + f"norm1.linear.{p}"]
            ctx = sd[s + f"norm1_context.linear.{p}"]
            out[o + f"context_block.adaLN_modulation.1.{p}"] = swap(ctx) if last else ctx
            out[o + f"x_block.mlp.fc1.{p}"] = sd[s + f"ff.net.0.proj.{p}"]
            out[o + f"x_block.mlp.fc2.{p}"] = sd[s + f"ff.net.2.{p}"]
            if not last:
                out[o + f"context_block.attn.proj.{p}"] = sd[s + f"attn.to_add_out.{p}"]
                out[o + f"context_block.mlp.fc1.{p}"] = sd[s + f"ff_context.net.0.proj.{p}"]
                out[o + f"context_block.mlp.fc2.{p}"] = sd[s + f"ff_context.net.2.{p}"]
            if s + f"attn2.to_q.{p}" in sd:
                out[o + f"x_block.attn2.qkv.{p}"] = torch.cat([sd[s + f"attn2.to_{x}.{p}"] for x in "qkv"])
                out[o + f"x_block.attn2.proj.{p}"] = sd[s + f"attn2.to_out.0.{p}"]
        for d, m in [("attn.norm_q", "x_block.attn.ln_q"), ("attn.norm_k", "x_block.attn.ln_k"),
                     ("attn.norm_added_q", "context_block.attn.ln_q"), ("attn.norm_added_k", "context_block.attn.ln_k"),
                     ("attn2.norm_q", "x_block.attn2.ln_q"), ("attn2.norm_k", "x_block.attn2.ln_k")]:
            if s + d + ".weight" in sd:
                out[o + m + ".weight"] = sd[s + d + ".weight"]
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values())
    return out


def clip(sd, prefix, projection=True):
    return {prefix + (k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in sd.items() if projection or not k.startswith("text_projection")}


cfg = json.load(open(f"{FOLDER}/transformer/config.json"))
vcfg = json.load(open(f"{FOLDER}/vae/config.json"))
sd = transformer(load_component(FOLDER, "transformer", "diffusion_pytorch_model"), cfg)
sd.update(convert_vae(load_component(FOLDER, "vae", "diffusion_pytorch_model"), vcfg))
sd.update(clip(load_component(FOLDER, "text_encoder", "model"), "text_encoders.clip_l.transformer.", False))
sd.update(clip(load_component(FOLDER, "text_encoder_2", "model"), "text_encoders.clip_g.transformer."))
sd.update({"text_encoders.t5xxl.transformer." + k: v for k, v in load_component(FOLDER, "text_encoder_3", "model").items()})
save_file({k: v.contiguous() for k, v in sorted(sd.items())}, OUT, metadata={"format": "pt"})
print(f"wrote {len(sd)} tensors to {OUT}")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from diffusers import StableDiffusion3Pipeline  # noqa: E402

configs = tempfile.mkdtemp()
for root, _, files in os.walk(FOLDER):
    for f in files:
        if f.endswith(".json") or f.endswith(".txt"):
            rel = os.path.relpath(os.path.join(root, f), FOLDER)
            os.makedirs(os.path.dirname(os.path.join(configs, rel)), exist_ok=True)
            shutil.copy(os.path.join(root, f), os.path.join(configs, rel))
got = StableDiffusion3Pipeline.from_single_file(OUT, config=configs, local_files_only=True, torch_dtype=torch.float32)
want = StableDiffusion3Pipeline.from_pretrained(FOLDER, local_files_only=True, torch_dtype=torch.float32)
for name in ["transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"]:
    a, b = getattr(got, name).state_dict(), getattr(want, name).state_dict()
    if name == "text_encoder":
        proj = a.pop("text_projection.weight")
        b.pop("text_projection.weight")
        assert torch.equal(proj, torch.eye(proj.shape[0])), "CLIP L's projection is not the identity"
    # transformers 5 ties T5's encoder.embed_tokens to shared; diffusers' single-file T5 loader
    # leaves that alias on the meta device (it is the same tensor as shared.weight).
    meta = sorted(k for k, v in a.items() if v.device.type == "meta")
    assert all(k.endswith("embed_tokens.weight") for k in meta), meta
    for k in meta:
        a.pop(k)
        b.pop(k)
    missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in b if k in a)
    print(f"{name}: {len(b)} tensors, max |diff| {diff}, missing {missing[:3]}, extra {extra[:3]}, tied aliases {meta}")
    assert not missing and not extra and diff == 0.0, name
print(f"ok: diffusers reads {OUT} as {FOLDER}, every tensor equal")
