"""SDXL single-file fixture, made independently of mapo, and proved with diffusers.

The conversion follows diffusers' scripts/convert_diffusers_to_original_sdxl.py (not in the
PyPI package), made config-aware: its UNet and VAE block maps come from the configs (the
upstream script hard-codes 3 UNet levels × 2 layers and 4 VAE levels, so it writes the tiny
VAE's decoder wrongly), it reads sharded weights, and it adds CLIP-L's `text_model.` prefix
where transformers 5 saved the keys without it.

    OMP_NUM_THREADS=1 python tools/golden/make_single_file.py            # writes the fixture
    OMP_NUM_THREADS=1 python tools/golden/make_single_file.py --check F  # diffusers reads F?

The check loads the file with `StableDiffusionXLPipeline.from_single_file` from a folder of
configs and tokenizers only (with weights beside the configs, diffusers silently loads a
component it does not find in the file from there, and the check would prove nothing), and
compares every tensor of the four components with `from_pretrained` of the folder.
Output: tests/fixtures/tiny-sdxl-single.safetensors (tests/single_file.rs).
"""
import json
import os
import re
import sys

import torch
from safetensors.torch import load_file, save_file


def load_component(folder, sub, base):
    d = os.path.join(folder, sub)
    single = os.path.join(d, base + ".safetensors")
    if os.path.exists(single):
        return load_file(single)
    idx = json.load(open(os.path.join(d, base + ".safetensors.index.json")))
    sd = {}
    for f in sorted(set(idx["weight_map"].values())):
        sd.update(load_file(os.path.join(d, f)))
    return sd


def unet_map(cfg):
    """diffusers prefix -> sgm prefix (ordered, longest first where needed)."""
    m = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."),
        ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    L = cfg["layers_per_block"]
    n = len(cfg["block_out_channels"])
    down_attn = ["CrossAttn" in t for t in cfg["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in cfg["up_block_types"]]
    k = 1
    for i in range(n):
        for j in range(L):
            m.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0."))
            if down_attn[i]:
                m.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1."))
            k += 1
        if i != n - 1:
            m.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{k}.0.op."))
            k += 1
    k = 0
    for i in range(n):
        for j in range(L + 1):
            m.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0."))
            if up_attn[i]:
                m.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1."))
            if j == L and i != n - 1:
                m.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{k}.{2 if up_attn[i] else 1}."))
            k += 1
    return m


RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
          ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def convert_unet(sd, cfg):
    m = unet_map(cfg)
    out = {}
    for k, v in sd.items():
        nk = None
        for hf, sg in m:
            if k.startswith(hf):
                rest = k[len(hf):]
                if ".resnets." in hf:
                    for a, b in RESNET:
                        if rest.startswith(a + "."):
                            rest = b + rest[len(a):]
                            break
                nk = sg + rest
                break
        if nk is None:
            raise KeyError(f"unmapped unet key {k}")
        out["model.diffusion_model." + nk] = v
    return out


def convert_vae(sd, cfg):
    n = len(cfg["block_out_channels"])
    L = cfg["layers_per_block"]
    m = [("conv_norm_out.", "norm_out."), ("mid_block.attentions.0.", "mid.attn_1."),
         ("mid_block.resnets.0.", "mid.block_1."), ("mid_block.resnets.1.", "mid.block_2.")]
    for i in range(n):
        for j in range(L):
            m.append((f"down_blocks.{i}.resnets.{j}.", f"down.{i}.block.{j}."))
        if i != n - 1:
            m.append((f"down_blocks.{i}.downsamplers.0.", f"down.{i}.downsample."))
            m.append((f"up_blocks.{i}.upsamplers.0.", f"up.{n - 1 - i}.upsample."))
        for j in range(L + 1):
            m.append((f"up_blocks.{i}.resnets.{j}.", f"up.{n - 1 - i}.block.{j}."))
    attn = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    out = {}
    for k, v in sd.items():
        nk = k
        for part in ("encoder.", "decoder."):
            if k.startswith(part):
                rest = k[len(part):]
                for hf, sg in m:
                    if rest.startswith(hf):
                        rest = sg + rest[len(hf):]
                        break
                if rest.startswith("mid.attn_1."):
                    tail = rest[len("mid.attn_1."):]
                    for a, b in attn:
                        if tail.startswith(a):
                            tail = b + tail[len(a):]
                    rest = "mid.attn_1." + tail
                    if tail.endswith(".weight") and v.ndim == 2:  # linear -> 1x1 conv
                        v = v.reshape(*v.shape, 1, 1)
                rest = rest.replace("conv_shortcut", "nin_shortcut")
                nk = part + rest
        out["first_stage_model." + nk] = v
    return out


def convert_clip_l(sd):
    out = {}
    for k, v in sd.items():
        if k == "text_projection.weight":  # CLIPTextModelWithProjection used as TE1: keep as-is
            nk = k
        elif k.startswith("text_model."):
            nk = k
        else:
            nk = "text_model." + k
        out["conditioner.embedders.0.transformer." + nk] = v
    return out


def convert_open_clip_g(sd):
    out, qkv = {}, {}
    for k, v in sd.items():
        k2 = k[len("text_model."):] if k.startswith("text_model.") else k
        mm = re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", k2)
        if mm:
            qkv.setdefault((int(mm.group(1)), mm.group(3)), {})[mm.group(2)] = v
            continue
        if k2 == "text_projection.weight" or k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()
            continue
        if k2 == "embeddings.position_ids":
            continue
        nk = (k2.replace("embeddings.token_embedding.weight", "token_embedding.weight")
                .replace("embeddings.position_embedding.weight", "positional_embedding")
                .replace("final_layer_norm.", "ln_final.")
                .replace("encoder.layers.", "transformer.resblocks.")
                .replace(".self_attn.out_proj.", ".attn.out_proj.")
                .replace(".layer_norm1.", ".ln_1.").replace(".layer_norm2.", ".ln_2.")
                .replace(".mlp.fc1.", ".mlp.c_fc.").replace(".mlp.fc2.", ".mlp.c_proj."))
        out[nk] = v
    for (i, wb), d in qkv.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{wb}"] = torch.cat([d["q"], d["k"], d["v"]], 0)
    return {"conditioner.embedders.1.model." + k: v for k, v in out.items()}



HERE = os.path.dirname(os.path.abspath(__file__))
FOLDER = os.path.join(HERE, "..", "..", "tests", "fixtures", "tiny-sdxl")
OUT = os.path.join(HERE, "..", "..", "tests", "fixtures", "tiny-sdxl-single.safetensors")


def write(folder, dst):
    ucfg = json.load(open(os.path.join(folder, "unet", "config.json")))
    vcfg = json.load(open(os.path.join(folder, "vae", "config.json")))
    sd = {}
    sd.update(convert_unet(load_component(folder, "unet", "diffusion_pytorch_model"), ucfg))
    sd.update(convert_vae(load_component(folder, "vae", "diffusion_pytorch_model"), vcfg))
    sd.update(convert_clip_l(load_component(folder, "text_encoder", "model")))
    sd.update(convert_open_clip_g(load_component(folder, "text_encoder_2", "model")))
    sd = {k: v.contiguous() for k, v in sd.items()}
    save_file(sd, dst, metadata={"format": "pt"})
    print(f"wrote {len(sd)} tensors to {dst}")


def check(single, folder):
    import shutil
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import StableDiffusionXLPipeline

    configs = tempfile.mkdtemp()
    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(".json") or f.endswith(".txt"):
                rel = os.path.relpath(os.path.join(root, f), folder)
                os.makedirs(os.path.dirname(os.path.join(configs, rel)), exist_ok=True)
                shutil.copy(os.path.join(root, f), os.path.join(configs, rel))
    got = StableDiffusionXLPipeline.from_single_file(single, config=configs, local_files_only=True)
    want = StableDiffusionXLPipeline.from_pretrained(folder, local_files_only=True)
    for name in ["unet", "vae", "text_encoder", "text_encoder_2"]:
        a, b = getattr(got, name).state_dict(), getattr(want, name).state_dict()
        missing, extra = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        diff = max((a[k].float() - b[k].float()).abs().max().item() for k in b if k in a)
        print(f"{name}: {len(b)} tensors, max |diff| {diff}, missing {missing[:3]}, extra {extra[:3]}")
        assert not missing and not extra and diff == 0.0, name
    print(f"ok: diffusers reads {single} as {folder}, every tensor equal")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2], FOLDER)
    else:
        write(FOLDER, OUT)
        check(OUT, FOLDER)
