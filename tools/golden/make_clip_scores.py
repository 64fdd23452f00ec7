"""A tiny random transformers CLIPModel and what PickScore's and torchmetrics' formulas give
with it (tests/fixtures/tiny-clip/).

  tiny-clip/                  config.json + model.safetensors (CLIPModel: gelu ViT, 32², patch 8),
                              preprocessor_config.json (shortest edge 32, bicubic, crop 32),
                              vocab.json + merges.txt (the tiny SDXL tokenizer's, 1000 ids)
  tiny-clip/images/*.png      images at the crop size and at sizes that need a bicubic resize
                              (down- and upscaling, both orientations)
  tiny-clip/pairs.jsonl       {"image", "prompt"} rows, one of them an image that does not decode
  tiny-aesthetic.pth          torch.save of an aesthetic-predictor MLP's state dict, the LAION
                              layout (layers.{0,2,4,6,7}, dropouts between) shrunk to 24→…→1
  clip_scores.safetensors     per image: the processor's pixel_values (transformers'
                              CLIPImageProcessorPil, i.e. PIL's bicubic), image_embeds,
                              text_embeds, and the scores:
                              pickscore = exp(logit_scale) · cos, clip = 100 · max(cos, 0),
                              aesthetic = mlp(image_embeds / |image_embeds|)

Run from the repo root:  OMP_NUM_THREADS=1 python3 tools/golden/make_clip_scores.py
"""
import json
import os
import shutil

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

OUT = "tests/fixtures/tiny-clip"
TOKENIZER = "tests/fixtures/tiny-sdxl/tokenizer"
torch.manual_seed(3)
rng = np.random.default_rng(3)
os.makedirs(f"{OUT}/images", exist_ok=True)

for f in ["vocab.json", "merges.txt"]:
    shutil.copy(f"{TOKENIZER}/{f}", f"{OUT}/{f}")
tok = CLIPTokenizer.from_pretrained(OUT)

config = CLIPConfig(
    text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
    vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       image_size=32, patch_size=8, hidden_act="gelu"),
    projection_dim=24,
)
model = CLIPModel(config).eval()
with torch.no_grad():
    # Larger than the default init so that the towers' outputs differ between inputs.
    for name, p in model.named_parameters():
        if "norm" not in name and "logit_scale" not in name:
            p.copy_(torch.randn_like(p) * 0.1)
model.save_pretrained(OUT)

processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
processor.save_pretrained(OUT)


def picture(w, h):
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([127 + 100 * np.sin(x / (3 + c) + y / (5 - c)) for c in range(3)], -1)
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


# (47, 32): a crop offset of 7.5, which transformers rounds down and open_clip (torchvision)
# rounds to even (8).
sizes = [(32, 32), (32, 32), (48, 40), (100, 37), (20, 30), (33, 64), (47, 32)]
prompts = ["a red circle", "a blue square on a dark background", "a cat", "two dogs, digits 42!",
           "an empty prompt? no", "a yellow triangle", "stripes"]
rows, images = [], []
for i, ((w, h), prompt) in enumerate(zip(sizes, prompts)):
    name = f"images/{i}_{w}x{h}.png"
    Image.fromarray(picture(w, h)).save(f"{OUT}/{name}")
    images.append(Image.open(f"{OUT}/{name}").convert("RGB"))
    rows.append({"image": name, "prompt": prompt, "id": i})
with open(f"{OUT}/images/broken.png", "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\nnot really")
rows.insert(3, {"image": "images/broken.png", "prompt": "never scored", "id": 99})
with open(f"{OUT}/pairs.jsonl", "w") as f:
    for r in rows:
        f.write(json.dumps(r) + "\n")

pixels = processor(images=images, return_tensors="pt")["pixel_values"]
ids = tok(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
with torch.no_grad():
    image_embeds = model.get_image_features(pixel_values=pixels)
    text_embeds = model.get_text_features(input_ids=ids["input_ids"])
    if not isinstance(image_embeds, torch.Tensor):  # transformers 5 returns an output object
        image_embeds, text_embeds = image_embeds.pooler_output, text_embeds.pooler_output
    i = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    t = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    cos = (i * t).sum(-1)
    pickscore = model.logit_scale.exp() * cos
    clip = 100 * cos.clamp(min=0)
# The LAION predictor's module (improved-aesthetic-predictor's MLP), at the tiny width.
mlp = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Dropout(0.2), torch.nn.Linear(32, 16),
                          torch.nn.Dropout(0.2), torch.nn.Linear(16, 8), torch.nn.Dropout(0.1),
                          torch.nn.Linear(8, 4), torch.nn.Linear(4, 1)).eval()
with torch.no_grad():
    for p in mlp.parameters():  # large enough that the score depends on the image
        p.copy_(torch.randn_like(p) * 0.8)
holder = torch.nn.Module()
holder.layers = mlp
torch.save(holder.state_dict(), "tests/fixtures/tiny-aesthetic.pth")
with torch.no_grad():
    emb = image_embeds.numpy()
    emb = emb / np.linalg.norm(emb, 2, -1, keepdims=True)  # the predictor's own `normalized`
    aesthetic = mlp(torch.from_numpy(emb).float())[:, 0]
print("aesthetic", aesthetic.tolist())
print("pickscore", pickscore.tolist())
print("clip", clip.tolist())
assert cos.std() > 0.05, "the tiny model's scores hardly differ"
assert aesthetic.std() > 0.05 * aesthetic.abs().mean(), "the tiny predictor's scores hardly differ"
save_file({"pixel_values": pixels.contiguous(), "image_embeds": image_embeds.contiguous(),
           "text_embeds": text_embeds.contiguous(), "pickscore": pickscore.contiguous(), "clip": clip.contiguous(),
           "aesthetic": aesthetic.contiguous(),
           "input_ids": ids["input_ids"].contiguous()}, "tests/fixtures/clip_scores.safetensors")
