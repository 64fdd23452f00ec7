"""Key trees (name -> shape) of the real SDXL UNet and VAE, built by diffusers on the meta
device from the stable-diffusion-xl-base-1.0 configs (no weights are downloaded or stored).

Writes tests/fixtures/sdxl_{unet,vae}_keys.json: {"config": ..., "params": N, "keys": [[name, shape], ...]}.
Run from the repo root: python3 tools/golden/real_key_trees.py
"""
import json
import os
import sys

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"

# stable-diffusion-xl-base-1.0/unet/config.json (structural keys).
SDXL_UNET = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

# stable-diffusion-xl-base-1.0/vae/config.json
SDXL_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def dump(cls, config, name):
    with torch.device("meta"):
        model = cls.from_config(config)
    keys = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    params = sum(p.numel() for p in model.parameters())
    with open(os.path.join(OUT, f"sdxl_{name}_keys.json"), "w") as f:
        json.dump({"config": config, "params": params, "keys": keys}, f, separators=(",", ":"))
    print(name, params, len(keys))


dump(UNet2DConditionModel, SDXL_UNET, "unet")
dump(AutoencoderKL, SDXL_VAE, "vae")
