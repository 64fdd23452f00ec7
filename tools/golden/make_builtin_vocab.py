"""Token ids of SDXL's two tokenizers on the built-in CLIP vocabulary (tests/tokenizer.rs).

The vocabulary is rebuilt from assets/clip/bpe_simple_vocab_16e6.txt.gz exactly as
open_clip's SimpleTokenizer builds it (and as mapo's models/clip/builtin_vocab.rs does),
written as transformers' vocab.json + merges.txt, and read by transformers' CLIPTokenizer:
its ids (padded to 77 with <|endoftext|>, and with "!" as SDXL's tokenizer_2 pads) are the
fixture. Run: python tools/golden/make_builtin_vocab.py
"""
import gzip
import json
import os
import tempfile

from transformers import CLIPTokenizer

root = os.path.join(os.path.dirname(__file__), "..", "..")
lines = gzip.open(os.path.join(root, "assets", "clip", "bpe_simple_vocab_16e6.txt.gz")).read().decode("utf-8").split("\n")
merges = lines[1 : 49152 - 256 - 2 + 1]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


vocab = list(bytes_to_unicode().values())
vocab += [v + "</w>" for v in vocab]
vocab += ["".join(m.split()) for m in merges]
vocab += ["<|startoftext|>", "<|endoftext|>"]
assert len(set(vocab)) == 49408
prompts = [
    "a photo of an astronaut riding a horse on mars",
    "A CAT, sitting!! on the mat...  42 apples; don't stop",
    "naïve café — 東京 🚀 emoji test",
    "   leading and trailing spaces   ",
    "masterpiece, best quality, 1girl, (detailed eyes:1.2), 8k uhd",
    "an extremely long prompt " + "with many repeated words " * 20,
    "",
    "ThE qUiCk BrOwN fOx JuMpS oVeR tHe LaZy DoG",
    "snake_case and kebab-case and CamelCase identifiers",
    "numbers 3.14159 and 1,000,000 and 2026-12-05",
]
out = {"vocab_size": len(vocab), "prompts": prompts}
with tempfile.TemporaryDirectory() as d:
    json.dump(dict(zip(vocab, range(len(vocab)))), open(os.path.join(d, "vocab.json"), "w"), ensure_ascii=False)
    open(os.path.join(d, "merges.txt"), "w").write("#version: 0.2\n" + "\n".join(merges) + "\n")
    for key, pad in [("input_ids", "<|endoftext|>"), ("input_ids_2", "!")]:
        tok = CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"), pad_token=pad)
        out[key] = [tok(p, padding="max_length", max_length=77, truncation=True).input_ids for p in prompts]
json.dump(out, open(os.path.join(root, "tests", "fixtures", "builtin_vocab_ids.json"), "w"))
print("wrote tests/fixtures/builtin_vocab_ids.json:", len(prompts), "prompts")
