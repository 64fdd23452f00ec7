"""Checkpoints that once fooled mapo's `.pth` reading (tests/hostile.rs):

- `abcdefghijklmnopqrstu.pth`: a valid torch.save file whose stem is 21 bytes; the zip crate
  under pytorch-reader misplaces its central directory (src/models/pth/zip_fix.rs);
- `bomb.pth`: a state dict re-zipped with deflate, declaring a 64 MiB tensor in a file of
  ~70 KB (torch.save stores entries uncompressed: no real tensor outgrows its file);
- `foreign.pth`: a state dict beside a pickled `torch.device` (not a tensor or container).

Each holds an aesthetic-MLP-shaped state dict (`layers.0.weight` [1, 2], `layers.0.bias` [1]).
Run: OMP_NUM_THREADS=1 python tools/golden/make_pth_cases.py
"""
import collections
import os
import zipfile

import torch

out = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "pth")
os.makedirs(out, exist_ok=True)
sd = collections.OrderedDict([("layers.0.weight", torch.tensor([[0.5, -2.0]])), ("layers.0.bias", torch.tensor([0.25]))])

torch.save(sd, os.path.join(out, "abcdefghijklmnopqrstu.pth"))
torch.save({**sd, "device": torch.device("cpu")}, os.path.join(out, "foreign.pth"))

src = os.path.join(out, "bomb-src.pth")
torch.save({"layers.0.weight": torch.zeros(2**14, 1024), "layers.0.bias": torch.zeros(2**14)}, src)
dst = os.path.join(out, "bomb.pth")
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zo:
    for info in zi.infolist():
        with zi.open(info) as f, zo.open(info.filename, "w", force_zip64=True) as g:
            while chunk := f.read(1 << 24):
                g.write(chunk)
os.remove(src)
for name in sorted(os.listdir(out)):
    print(name, os.path.getsize(os.path.join(out, name)))

# An aesthetic MLP for tiny-clip (projection_dim 24) whose weight holds inf: its scores are
# not finite numbers, which `mapo score` must report as errors, not as scores.
bad = torch.ones(1, 24)
bad[0, 0] = float("inf")
torch.save(collections.OrderedDict([("layers.0.weight", bad), ("layers.0.bias", torch.zeros(1))]), os.path.join(out, "nonfinite.pth"))
