"""Checks `mapo tokenize` against transformers' CLIPTokenizer with CLIP's full vocabulary
(49,408 ids, built from open_clip_torch's bpe_simple_vocab_16e6.txt.gz as CLIP does).
Not a committed fixture (the vocabulary is ~2 MB); run by hand:

  python3 tools/golden/check_full_tokenizer.py path/to/bpe_simple_vocab_16e6.txt.gz path/to/mapo
"""
import gzip
import json
import os
import subprocess
import sys
import tempfile

from transformers import CLIPTokenizer

from clip_bpe import vocabulary

bpe, binary = sys.argv[1:3]


merges = [tuple(m.split()) for m in gzip.open(bpe).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
vocab = vocabulary(merges)
assert len(vocab) == 49408
root = tempfile.mkdtemp()
for name, pad in [("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")]:
    d = os.path.join(root, name)
    os.makedirs(d)
    json.dump({v: i for i, v in enumerate(vocab)}, open(f"{d}/vocab.json", "w"), ensure_ascii=False)
    open(f"{d}/merges.txt", "w").write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    json.dump({"pad_token": pad, "model_max_length": 77}, open(f"{d}/tokenizer_config.json", "w"))
prompts = json.load(open("tests/fixtures/tokenizer_prompts.json")) + [
    "Astronaut riding a horse on Mars, 8k, photorealistic, <|endoftext|> trailing",
    "naïve café — “quotes” and ‘apostrophes’ isn't it?",
]
tok = [CLIPTokenizer.from_pretrained(os.path.join(root, n)) for n in ["tokenizer", "tokenizer_2"]]
same = 0
for p in prompts:
    want = [t(p, padding="max_length", max_length=77, truncation=True).input_ids for t in tok]
    out = subprocess.run([binary, "tokenize", "--model", root, "--prompt", p], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    same += got["input_ids"] == want[0] and got["input_ids_2"] == want[1]
print(f"{same}/{len(prompts)} prompts give identical ids with both tokenizers")
sys.exit(0 if same == len(prompts) else 1)
