"""Parameter counts of the real SD3 / SD3.5 transformers from their configs (assets/sd3/),
built by diffusers on the meta device (no memory): tests/fixtures/sd3_param_counts.json.
The count excludes the `pos_embed.pos_embed` buffer; `buffer` gives its size.

Run: python tools/golden/count_sd3_params.py
"""
import json
import os

import torch
from diffusers import SD3Transformer2DModel

out = {}
for name in ["sd3_medium", "sd35_medium", "sd35_large"]:
    with open(os.path.join("assets", "sd3", f"{name}_transformer.json")) as f:
        config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = SD3Transformer2DModel(**config)
    out[name] = {"params": sum(p.numel() for p in model.parameters()),
                 "buffer": model.pos_embed.pos_embed.numel(),
                 "tensors": len(model.state_dict())}
    print(name, out[name])
with open(os.path.join("tests", "fixtures", "sd3_param_counts.json"), "w") as f:
    json.dump(out, f, indent=1)
