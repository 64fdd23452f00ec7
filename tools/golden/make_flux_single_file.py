"""A FLUX.1 [dev] transformer single file in Black Forest Labs' layout, made from
tests/fixtures/tiny-flux-dev/transformer and proven with diffusers' own reader:
tests/fixtures/tiny-flux-dev-bfl.safetensors (bare BFL keys, f32).

The file is written by hand from the diffusers state dict (the inverse of diffusers'
`convert_flux_transformer_checkpoint_to_diffusers`): `double_blocks.N.img_attn.qkv` = cat(to_q,
to_k, to_v) (weights and biases), `txt_attn.qkv` from add_{q,k,v}_proj, `*.norm.query_norm.scale`
/ `key_norm.scale` from the RMS norms, `img_mod.lin` / `txt_mod.lin` from norm1 / norm1_context,
`img_mlp.{0,2}` / `txt_mlp.{0,2}` from ff / ff_context, `single_blocks.N.linear1` = cat(to_q, to_k,
to_v, proj_mlp), `linear2` = proj_out, `modulation.lin` = norm.linear, `img_in`, `txt_in`,
`time_in`, `vector_in`, `guidance_in` (`in_layer` / `out_layer`), `final_layer.linear` = proj_out
and `final_layer.adaLN_modulation.1` = norm_out.linear with its (scale, shift) halves swapped
to BFL's (shift, scale). Then FluxTransformer2DModel.from_single_file(file, config=the folder)
must give back every tensor exactly and the same output on flux_transformer_cases' dev.case0.
diffusers 0.42.1 hard-codes FLUX.1's width (inner_dim = 3072) in that converter; the tiny
model's 16 is patched in for the check, as make_flux_transformer.py does for the LoRA one.

Also tests/fixtures/tiny-flux-ae.safetensors: the folder's VAE as BFL ships FLUX's
`ae.safetensors`, ldm names without a prefix (make_single_file.py's config-aware converter,
`first_stage_model.` dropped), proven with AutoencoderKL.from_single_file (every tensor equal).

Run from the repo root: OMP_NUM_THREADS=1 python3 tools/golden/make_flux_single_file.py
"""
import inspect

import torch
from diffusers import FluxTransformer2DModel
from diffusers.loaders import single_file_model, single_file_utils
from safetensors import safe_open
from safetensors.torch import save_file

FOLDER = "tests/fixtures/tiny-flux-dev"
OUT = "tests/fixtures/tiny-flux-dev-bfl.safetensors"
model = FluxTransformer2DModel.from_pretrained(f"{FOLDER}/transformer", torch_dtype=torch.float32).eval()
sd = model.state_dict()
c = model.config
inner = c.num_attention_heads * c.attention_head_dim

bfl = {}
pairs = {"x_embedder": "img_in", "context_embedder": "txt_in",
         "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
         "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
         "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
         "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
         "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
         "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
         "proj_out": "final_layer.linear"}
for d, b in pairs.items():
    for p in ("weight", "bias"):
        bfl[f"{b}.{p}"] = sd[f"{d}.{p}"]
for p in ("weight", "bias"):
    scale, shift = sd[f"norm_out.linear.{p}"].chunk(2, dim=0)
    bfl[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift, scale])
for i in range(c.num_layers):
    s, o = f"transformer_blocks.{i}.", f"double_blocks.{i}."
    for p in ("weight", "bias"):
        bfl[o + f"img_attn.qkv.{p}"] = torch.cat([sd[s + f"attn.to_{x}.{p}"] for x in "qkv"])
        bfl[o + f"txt_attn.qkv.{p}"] = torch.cat([sd[s + f"attn.add_{x}_proj.{p}"] for x in "qkv"])
        for d, b in [("norm1.linear", "img_mod.lin"), ("norm1_context.linear", "txt_mod.lin"),
                     ("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj"),
                     ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"),
                     ("ff_context.net.0.proj", "txt_mlp.0"), ("ff_context.net.2", "txt_mlp.2")]:
            bfl[o + f"{b}.{p}"] = sd[s + f"{d}.{p}"]
    for d, b in [("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm"),
                 ("norm_added_q", "txt_attn.norm.query_norm"), ("norm_added_k", "txt_attn.norm.key_norm")]:
        bfl[o + f"{b}.scale"] = sd[s + f"attn.{d}.weight"]
for i in range(c.num_single_layers):
    s, o = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
    for p in ("weight", "bias"):
        bfl[o + f"linear1.{p}"] = torch.cat([sd[s + f"attn.to_{x}.{p}"] for x in "qkv"] + [sd[s + f"proj_mlp.{p}"]])
        bfl[o + f"linear2.{p}"] = sd[s + f"proj_out.{p}"]
        bfl[o + f"modulation.lin.{p}"] = sd[s + f"norm.linear.{p}"]
    bfl[o + "norm.query_norm.scale"] = sd[s + "attn.norm_q.weight"]
    bfl[o + "norm.key_norm.scale"] = sd[s + "attn.norm_k.weight"]
assert sum(v.numel() for v in bfl.values()) == sum(v.numel() for v in sd.values())
save_file({k: v.contiguous() for k, v in sorted(bfl.items())}, OUT)
print(len(bfl), "tensors written to", OUT)

# diffusers' reader, with the tiny width.
src = inspect.getsource(single_file_utils.convert_flux_transformer_checkpoint_to_diffusers)
assert src.count("inner_dim = 3072") == 1
ns = dict(vars(single_file_utils))
exec(compile(src.replace("inner_dim = 3072", f"inner_dim = {inner}"), "<patched>", "exec"), ns)
patched = ns["convert_flux_transformer_checkpoint_to_diffusers"]
single_file_utils.convert_flux_transformer_checkpoint_to_diffusers = patched
for entry in single_file_model.SINGLE_FILE_LOADABLE_CLASSES.values():
    if entry.get("checkpoint_mapping_fn").__name__ == "convert_flux_transformer_checkpoint_to_diffusers":
        entry["checkpoint_mapping_fn"] = patched
loaded = FluxTransformer2DModel.from_single_file(OUT, config=FOLDER, subfolder="transformer",
                                                 torch_dtype=torch.float32).eval()
lsd = loaded.state_dict()
assert set(lsd) == set(sd), set(lsd) ^ set(sd)
assert all(torch.equal(lsd[k], sd[k]) for k in sd), [k for k in sd if not torch.equal(lsd[k], sd[k])]
with safe_open("tests/fixtures/flux_transformer_cases.safetensors", "pt") as f:
    x = {k: f.get_tensor(f"dev.case0.{k}") for k in ["hidden_states", "encoder_hidden_states", "pooled_projections",
                                                     "timestep", "img_ids", "txt_ids", "guidance"]}
    want = f.get_tensor("dev.case0.sample")
with torch.no_grad():
    got = loaded(**x).sample
assert torch.equal(got, model(**x).sample)
print("from_single_file: every tensor equal; output vs the cases' sample:",
      ((got - want).abs().max() / want.abs().max()).item())

# ---- ae.safetensors: the VAE alone, ldm names, no prefix ----
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from diffusers import AutoencoderKL  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_single_file import convert_vae, load_component  # noqa: E402

AE = "tests/fixtures/tiny-flux-ae.safetensors"
vcfg = json.load(open(f"{FOLDER}/vae/config.json"))
ldm = convert_vae(load_component(FOLDER, "vae", "diffusion_pytorch_model"), vcfg)
ae = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in ldm.items()}
save_file(dict(sorted(ae.items())), AE)
got = AutoencoderKL.from_single_file(AE, config=FOLDER, subfolder="vae", torch_dtype=torch.float32).state_dict()
want = AutoencoderKL.from_pretrained(f"{FOLDER}/vae", torch_dtype=torch.float32).state_dict()
assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
print(len(ae), "VAE tensors written to", AE, "; from_single_file: every tensor equal")
