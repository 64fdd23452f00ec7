"""Tokenizer fixtures: CLIP's BPE vocabulary cut to its first 486 merges (so that, with
256 byte symbols, 256 end-of-word symbols and the two special tokens, it has exactly the
1000 ids of the tiny text encoders: <|startoftext|> = 998, <|endoftext|> = 999), written
as diffusers `tokenizer/` (pads with <|endoftext|>) and `tokenizer_2/` (pads with "!"),
and the ids transformers' CLIPTokenizer gives for a set of prompts.

The merges come from CLIP's own `bpe_simple_vocab_16e6.txt.gz`, which the PyPI package
open_clip_torch ships:  pip download --no-deps open_clip_torch; unzip it; then
  python3 tools/golden/make_tokenizers.py path/to/bpe_simple_vocab_16e6.txt.gz
"""
import gzip
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import CLIPTokenizer

from clip_bpe import vocabulary

bpe_path = sys.argv[1]
OUT = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures"
N_MERGES = 486

merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1:1 + N_MERGES]
merges = [tuple(m.split()) for m in merges]
vocab = vocabulary(merges)
assert len(vocab) == 1000
vocab_map = {v: i for i, v in enumerate(vocab)}

for name, pad in [("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")]:
    d = os.path.join(OUT, "tiny-sdxl", name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.json"), "w") as f:
        json.dump(vocab_map, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
              "pad_token": pad}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)

PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT, sitting on a mat!!!",
    "digits 0123456789 and 3.14159",
    "café naïve résumé Ångström",
    "emoji 🐱🚀 and symbols © ™ ∞",
    "repeated    spaces\tand\nnewlines",
    "",
    "it's what we've done, they'll say; I'm sure you'd agree",
    "日本語のテキスト and 中文",
    " ".join(["a very long prompt about a landscape with mountains"] * 12),
]
out = {}
for name in ["tokenizer", "tokenizer_2"]:
    tok = CLIPTokenizer.from_pretrained(os.path.join(OUT, "tiny-sdxl", name))
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    out[f"{name}.input_ids"] = ids.to(torch.int64)
save_file(out, os.path.join(OUT, "tokenizer_ids.safetensors"))
with open(os.path.join(OUT, "tokenizer_prompts.json"), "w") as f:
    json.dump(PROMPTS, f, ensure_ascii=False, indent=1)
print(out["tokenizer.input_ids"][:3, :12])
print(out["tokenizer_2.input_ids"][6, :5])
