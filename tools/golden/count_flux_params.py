"""Parameter counts of the real FLUX.1 [dev] and [schnell] transformers from their configs
(assets/flux/, as black-forest-labs ships them), built by diffusers on the meta device (no
memory): tests/fixtures/flux_param_counts.json. FLUX has no buffers.

Run: python tools/golden/count_flux_params.py
"""
import json
import os

import torch
from diffusers import FluxTransformer2DModel

out = {}
for name in ["flux1_dev", "flux1_schnell"]:
    with open(os.path.join("assets", "flux", f"{name}_transformer.json")) as f:
        config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
    out[name] = {"params": sum(p.numel() for p in model.parameters()), "tensors": len(model.state_dict())}
    print(name, out[name])
with open(os.path.join("tests", "fixtures", "flux_param_counts.json"), "w") as f:
    json.dump(out, f, indent=1)
