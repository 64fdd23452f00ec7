"""Parity fixtures for the two SDXL text encoders (tiny configs), made with transformers.

Writes tests/fixtures/tiny-sdxl/text_encoder (CLIPTextModel, quick_gelu, legacy
eos_token_id = 2 so the pooled token is argmax(input_ids)) and text_encoder_2
(CLIPTextModelWithProjection, gelu, eos_token_id set), their outputs on a batch of ids in
text_encoders.safetensors, and the real SDXL key trees in sdxl_text_encoder*_keys.json.

Run from the repo root:  OMP_NUM_THREADS=1 python3 tools/golden/make_text_encoders.py
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
torch.manual_seed(3)
VOCAB, BOS, EOS = 1000, 998, 999


def randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))


def ids(pad):
    rows = []
    for length in [5, 12, 77, 1]:
        body = torch.randint(1, 990, (min(length, 75),)).tolist()
        row = [BOS] + body + [EOS]
        row = (row + [pad] * 77)[:77]
        if length == 77:
            row[-1] = EOS  # truncated prompts end with EOS
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int64)


# Widths fit the tiny UNet: 16 + 32 = its cross_attention_dim 48, and the projection (32)
# plus 6 × 8 time-id features = its projection_class_embeddings_input_dim 80.
common = dict(vocab_size=VOCAB, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
              layer_norm_eps=1e-5, bos_token_id=BOS, pad_token_id=1)
enc1 = CLIPTextModel(CLIPTextConfig(**common, hidden_size=16, intermediate_size=32, hidden_act="quick_gelu",
                                    eos_token_id=2, projection_dim=16)).eval()
enc2 = CLIPTextModelWithProjection(CLIPTextConfig(**common, hidden_size=32, intermediate_size=64, hidden_act="gelu",
                                                  eos_token_id=EOS, projection_dim=32)).eval()
randomize(enc1)
randomize(enc2)
root = os.path.join(OUT, "tiny-sdxl")
enc1.save_pretrained(os.path.join(root, "text_encoder"))
enc2.save_pretrained(os.path.join(root, "text_encoder_2"))

out = {}
with torch.no_grad():
    x1 = ids(EOS)
    o1 = enc1(x1, output_hidden_states=True)
    x2 = ids(0)
    o2 = enc2(x2, output_hidden_states=True)
out.update({"te1.input_ids": x1, "te1.hidden_states": o1.hidden_states[-2], "te1.last_hidden_state": o1.last_hidden_state,
            "te1.pooled": o1.pooler_output,
            "te2.input_ids": x2, "te2.hidden_states": o2.hidden_states[-2], "te2.text_embeds": o2.text_embeds})
save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "text_encoders.safetensors"))

# Real SDXL text encoder configs (stable-diffusion-xl-base-1.0), on the meta device.
REAL = {
    "text_encoder": (CLIPTextModel, dict(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                     num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                     hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
                     bos_token_id=0, eos_token_id=2, pad_token_id=1)),
    "text_encoder_2": (CLIPTextModelWithProjection, dict(vocab_size=49408, hidden_size=1280,
                       intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                       max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
                       projection_dim=1280, bos_token_id=0, eos_token_id=2, pad_token_id=1)),
}
for name, (cls, cfg) in REAL.items():
    with torch.device("meta"):
        model = cls(CLIPTextConfig(**cfg))
    keys = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    params = sum(p.numel() for p in model.parameters())
    with open(os.path.join(OUT, f"sdxl_{name}_keys.json"), "w") as f:
        json.dump({"config": cfg, "params": params, "keys": keys}, f, separators=(",", ":"))
    print(name, params, len(keys))
