"""Parity fixtures for the SDXL UNet and VAE (tiny configs), made with PyTorch + diffusers.

Writes under tests/fixtures/:
  tiny-sdxl/unet/      config.json + weights stored in f16 (exercises f16 -> f32 loading)
  tiny-sdxl/vae/       config.json + weights stored in bf16, sharded (exercises the index + bf16)
  unet_cases.safetensors   inputs and diffusers outputs for several UNet calls
  unet_grads.safetensors   gradients of a fixed scalar of the UNet output
  vae_cases.safetensors    VAE encode / decode inputs and outputs

Run from the repo root:  OMP_NUM_THREADS=1 python3 tools/golden/make_unet_vae.py
The stored weights are rounded to f16/bf16 *before* the reference runs, so Rust and
PyTorch compute with bit-identical f32 parameters.
"""
import json
import os
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
torch.manual_seed(0)
torch.use_deterministic_algorithms(True)

# Same structure as SDXL (3 blocks, cross-attn in blocks 2-3, text_time add-embedding),
# shrunk: channels 16/32/64, head size 8, 2 transformer layers in the deepest blocks.
UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[16, 32, 64],
    layers_per_block=2,
    transformer_layers_per_block=[1, 1, 2],
    attention_head_dim=[2, 4, 8],
    cross_attention_dim=48,
    norm_num_groups=8,
    norm_eps=1e-5,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=32 + 6 * 8,
    flip_sin_to_cos=True,
    freq_shift=0,
)
TEXT_EMBED_DIM = 32

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[16, 32, 32],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
    scaling_factor=0.13025,
)


def randomize(model, scale=0.2):
    """diffusers zero-inits some layers (e.g. conv_out); random weights test every path."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(scale * torch.randn_like(p) / max(1.0, p[0].numel() ** 0.5) * 2)


def round_to(model, dtype):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))


def main():
    root = os.path.join(OUT, "tiny-sdxl")

    unet = UNet2DConditionModel(**UNET_CONFIG)
    randomize(unet)
    round_to(unet, torch.float16)
    unet.eval()
    unet.to(torch.float16).save_pretrained(os.path.join(root, "unet"))
    unet.to(torch.float32)

    vae = AutoencoderKL(**VAE_CONFIG)
    randomize(vae)
    round_to(vae, torch.bfloat16)
    vae.eval()
    vae.to(torch.bfloat16).save_pretrained(os.path.join(root, "vae"), max_shard_size="100KB")
    vae.to(torch.float32)

    cross = UNET_CONFIG["cross_attention_dim"]
    cases = {}
    # (batch, h, w, timesteps): odd sizes force diffusers' forward_upsample_size path.
    specs = [(2, 12, 16, [999, 1]), (1, 8, 8, [500]), (3, 13, 11, [0, 250, 741])]
    for i, (b, h, w, ts) in enumerate(specs):
        sample = torch.randn(b, 4, h, w)
        timestep = torch.tensor(ts, dtype=torch.int64)
        ehs = torch.randn(b, 77, cross)
        text_embeds = torch.randn(b, TEXT_EMBED_DIM)
        time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0],
                                 [768.0, 1360.0, 32.0, 64.0, 1024.0, 1024.0],
                                 [512.0, 512.0, 8.0, 0.0, 896.0, 1152.0]])[:b]
        with torch.no_grad():
            out = unet(sample, timestep, ehs,
                       added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
        for k, v in dict(sample=sample, timestep=timestep, encoder_hidden_states=ehs,
                         text_embeds=text_embeds, time_ids=time_ids, out=out).items():
            cases[f"case{i}.{k}"] = v.contiguous()
    save_file(cases, os.path.join(OUT, "unet_cases.safetensors"))

    # Gradient of sum(out * probe) w.r.t. a few parameters of different kinds.
    b, h, w = 2, 8, 12
    sample = torch.randn(b, 4, h, w)
    timestep = torch.tensor([321, 42])
    ehs = torch.randn(b, 77, cross)
    text_embeds = torch.randn(b, TEXT_EMBED_DIM)
    time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * b)
    probe = torch.randn(b, 4, h, w)
    unet.zero_grad()
    out = unet(sample, timestep, ehs,
               added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}).sample
    scalar = (out * probe).sum()
    scalar.backward()
    params = dict(unet.named_parameters())
    grad_names = [
        "conv_in.weight",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
        "down_blocks.2.attentions.0.transformer_blocks.1.attn2.to_k.weight",
        "mid_block.resnets.0.norm1.weight",
        "up_blocks.0.attentions.2.norm.bias",
        "add_embedding.linear_1.weight",
        "time_embedding.linear_2.bias",
    ]
    grads = dict(sample=sample, timestep=timestep, encoder_hidden_states=ehs,
                 text_embeds=text_embeds, time_ids=time_ids, probe=probe,
                 scalar=scalar.detach().reshape(1))
    for n in grad_names:
        grads["grad." + n] = params[n].grad.detach().clone()
    save_file({k: v.contiguous() for k, v in grads.items()},
              os.path.join(OUT, "unet_grads.safetensors"))

    vcases = {}
    for i, (b, hh, ww) in enumerate([(2, 32, 24), (1, 16, 16)]):
        x = torch.rand(b, 3, hh, ww) * 2 - 1
        with torch.no_grad():
            dist = vae.encode(x).latent_dist
            z = torch.randn(b, 4, hh // 8, ww // 8)
            dec = vae.decode(z).sample
        vcases.update({f"case{i}.sample": x, f"case{i}.mean": dist.mean,
                       f"case{i}.logvar": dist.logvar, f"case{i}.latents": z,
                       f"case{i}.decoded": dec})
    save_file({k: v.contiguous() for k, v in vcases.items()},
              os.path.join(OUT, "vae_cases.safetensors"))

    counts = {"unet": sum(p.numel() for p in unet.parameters()),
              "vae": sum(p.numel() for p in vae.parameters())}
    with open(os.path.join(OUT, "tiny-sdxl", "param_counts.json"), "w") as f:
        json.dump(counts, f, indent=1)
    print(counts)


if __name__ == "__main__":
    main()
