"""A tiny random open_clip CLIP saved the way HPSv2 ships (`torch.save({'state_dict': ...})`),
and its HPS scores (tests/fixtures/tiny-hps.pt, tiny-hps.json, hps_scores.safetensors).

HPS's own scoring: open_clip's val transform (PIL bicubic resize, torchvision centre crop,
ToTensor, OpenAI mean/std), open_clip's tokenizer, then
`cos(encode_image(x), encode_text(ids))` per image. The tokenizer is open_clip's
SimpleTokenizer on the tiny BPE merges of tests/fixtures/tiny-sdxl/tokenizer (1000 ids, the
same ids as the HF tokenizer there); the images are tests/fixtures/tiny-clip's.

Run from the repo root, after make_clip_scores.py:  OMP_NUM_THREADS=1 python3 tools/golden/make_hps.py
"""
import gzip
import json
import os
import tempfile

import torch
from open_clip import image_transform
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPTokenizer

torch.manual_seed(4)
CONFIG = {"embed_dim": 24,
          "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 12, "patch_size": 8},
          "text_cfg": {"context_length": 77, "vocab_size": 1000, "width": 32, "heads": 4, "layers": 2}}
model = CLIP(CONFIG["embed_dim"], CLIPVisionCfg(**CONFIG["vision_cfg"]), CLIPTextCfg(**CONFIG["text_cfg"])).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if "ln" not in name and "logit_scale" not in name:
            p.copy_(torch.randn_like(p) * 0.1)
torch.save({"state_dict": model.state_dict()}, "tests/fixtures/tiny-hps.pt")
with open("tests/fixtures/tiny-hps.json", "w") as f:
    json.dump(CONFIG, f, indent=1)

merges = open("tests/fixtures/tiny-sdxl/tokenizer/merges.txt").read().strip().split("\n")
bpe = os.path.join(tempfile.mkdtemp(), "bpe.txt.gz")
with gzip.open(bpe, "wt") as f:
    f.write("\n".join(merges))  # no trailing newline: open_clip would read it as a merge
tokenizer = SimpleTokenizer(bpe_path=bpe)
hf = CLIPTokenizer.from_pretrained("tests/fixtures/tiny-sdxl/tokenizer")

rows = [json.loads(l) for l in open("tests/fixtures/tiny-clip/pairs.jsonl")]
rows = [r for r in rows if r["id"] != 99]
prompts = [r["prompt"] for r in rows]
ids = tokenizer(prompts)
for p, row in zip(prompts, ids):
    want = hf(p)["input_ids"]
    assert row[:len(want)].tolist() == want, (p, row[:len(want)].tolist(), want)

preprocess = image_transform(CONFIG["vision_cfg"]["image_size"], is_train=False)
pixels = torch.stack([preprocess(Image.open(f"tests/fixtures/tiny-clip/{r['image']}")) for r in rows])
with torch.no_grad():
    i = model.encode_image(pixels)
    t = model.encode_text(ids)
    i = i / i.norm(dim=-1, keepdim=True)
    t = t / t.norm(dim=-1, keepdim=True)
    hps = (i * t).sum(-1)
print("hps", hps.tolist())
assert hps.std() > 0.05
save_file({"pixel_values": pixels.contiguous(), "hps": hps.contiguous()}, "tests/fixtures/hps_scores.safetensors")
