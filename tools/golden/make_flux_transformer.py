"""Tiny FLUX.1 [dev] / [schnell] transformers, their forward outputs, flow-matching train steps
and LoRAs (PEFT and kohya/BFL layout) on them.

Writes to tests/fixtures/ (all tensors f32):

tiny-flux-dev/transformer/, tiny-flux-schnell/transformer/ (config.json and
  diffusion_pytorch_model.safetensors each): diffusers FluxTransformer2DModel folders
  (save_pretrained, safetensors). Both: patch_size 1, in_channels 64 (= 16 latent channels
  packed 2×2), out_channels None (→ 64), 2 double-stream layers (transformer_blocks), 2
  single-stream layers (single_transformer_blocks), 2 heads of 8 (inner dim 16, MLP 64),
  joint_attention_dim 24, pooled_projection_dim 8, axes_dims_rope (2, 2, 4) (sum = head dim).
  tiny-flux-dev: guidance_embeds True (seed 0); tiny-flux-schnell: guidance_embeds False (seed 1).
  Every parameter is random (0.4·randn/√fan_in, biases 0.4·randn; RMSNorm weights norm_q,
  norm_k, norm_added_q, norm_added_k = 1 + 0.1·randn), the AdaLN `norm*.linear`, `norm_out.linear`
  and `proj_out` included, so every gate is non-zero. The model has no buffers.

flux_transformer_cases.safetensors: for v in (dev, schnell) and i in (0, 1):
  `{v}.case{i}.hidden_states` [B,N,64] (packed), `.encoder_hidden_states` [B,L,24],
  `.pooled_projections` [B,8], `.timestep` [B] (σ in (0,1), passed as is: the model multiplies
  it by 1000 itself, as FluxPipeline passes t/1000), `.img_ids` [N,3], `.txt_ids` [L,3],
  `.guidance` [B] (dev only; raw guidance scale, the model multiplies it by 1000 too) and
  `.sample` [B,N,64] (model(...).sample, eval, no_grad).
  case0: B=2, L=7, hidden_states = FluxPipeline._pack_latents of randn [2,16,8,6] latents
  (N = 4·3 = 12), img_ids = FluxPipeline._prepare_latent_image_ids(·, 4, 3) (row n = (0, n//3,
  n%3)), txt_ids zeros, timestep [0.8576923, 0.0089286], guidance [3.5, 2.0].
  case1: B=1, L=5, N=4 (pack of randn [1,16,4,4]), timestep [0.6021505], guidance [2.75],
  img_ids NON-standard: row n = (1, 3 + n//2, 5 + n%2); txt_ids small random integers in
  [0, 4] (f32). A port that recomputes the ids instead of using the given ones fails case1
  (the output with standard ids is asserted to differ).
  `dev.case0.unpacked` [2,16,8,6]: the latents whose _pack_latents is dev.case0.hidden_states;
  `dev.case0.sample_unpacked` [2,16,8,6] = FluxPipeline._unpack_latents(sample, height 32,
  width 24, vae_scale_factor 4) (→ 2·(32//8) = 8 by 2·(24//8) = 6 latents).

flux_train_sft_sgd (tiny-flux-schnell), flux_dev_train_sft_adamw, flux_dev_train_dpo_sgd,
  flux_dev_train_mapo_adamw (tiny-flux-dev) (.safetensors): the flow-matching training step of
  docs/design.md §2b, 2 steps on one fixed batch, starting from the folder above
  (from_pretrained, train mode). Inputs: `chosen`, `rejected`, `noise` [2,16,8,6] (UNPACKED
  latents), `sigma` [2] = [0.7, 0.25] (shared by the pair), `encoder_hidden_states` [2,7,24],
  `pooled_projections` [2,8], and for dev `guidance` [2] = [3.5, 1.0].
  Step: x_σ = (1−σ)·x₀ + σ·ε (same ε for both images of a pair); SFT runs the chosen rows only,
  DPO/MaPO the batch [chosen rows; rejected rows] with text inputs, σ and guidance repeated;
  the model gets hidden_states = _pack_latents(x_σ) [B,12,64], timestep = σ (NOT ·1000),
  img_ids = _prepare_latent_image_ids(·, 4, 3) [12,3], txt_ids = zeros [7,3], guidance (dev);
  its prediction is UNPACKED (_unpack_latents, 32×24 px, vae_scale_factor 4 → [B,16,8,6]) and
  compared with the unpacked target u = ε − x₀; per-row L = mean over (C,h,w) of (v − u)² in
  f32 (the same 768 numbers as the packed comparison, summed in the unpacked order).
  SFT: mean(L_w). Flow-DPO (β 100, reference = the frozen initial transformer):
  −logsigmoid(−β/2·((L_w − L_l) − (R_w − R_l))).mean(). MaPO (β 0.1, snr_value s 0.5,
  num_train_timesteps T): margin = T·(f(s·L_w) − f(s·L_l)), f(x) = x/(eˣ − 1);
  loss = mean(L_w) − β·logsigmoid(margin).mean(). T is 1000 unless the first step's margin at
  T = 1000 saturates (max |margin| > 30, so that MaPO degenerates to SFT); then T = 100. The T
  used is in the metadata (`num_train_timesteps`) and the probe's T = 1000 margin too
  (`margin_at_T1000`). Then backward, clip_grad_norm_(1.0), optimiser step. SGD: lr 1e-3, no
  momentum. AdamW: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2.
  Outputs: `expected.loss` [2] (each step's loss, before its update), `expected.grad_norm` [2]
  (clip_grad_norm_'s total norm, before clipping), and `expected.after.<name>` for EVERY
  parameter, named as in the state dict. The hyperparameters are in the file's metadata, as one
  JSON string under the key `hyperparameters` (for dev also "guidance").

lora/flux_peft.safetensors: diffusers' own FluxPipeline.save_lora_weights of a PEFT LoRA
  (get_peft_model_state_dict) on tiny-flux-dev: rank 4, lora_alpha 8 (scale 2), random A and B
  (0.2·randn), target_modules to_q, to_k, to_v, to_out.0, add_q_proj, add_k_proj, add_v_proj,
  to_add_out, proj_mlp, proj_out, ff.net.0.proj, ff.net.2, ff_context.net.0.proj,
  ff_context.net.2 ("proj_out" matches the single blocks' proj_out AND the top-level proj_out;
  single blocks have no to_out / add_*). Keys `transformer.<module>.lora_A.weight` / `.lora_B.weight`;
  the adapter config is the JSON under the metadata key `lora_adapter_metadata` (keys prefixed
  `transformer.`, target_modules sorted, `__metadata__` entries rewritten in sorted order).
lora/flux_kohya.safetensors: a hand-built kohya (sd-scripts) / BFL-layout LoRA for tiny-flux-dev:
  `lora_unet_double_blocks_{0,1}_{img,txt}_{attn_qkv,attn_proj,mlp_0,mlp_2,mod_lin}` and
  `lora_unet_single_blocks_{0,1}_{linear1,linear2,modulation_lin}`, each `.lora_down.weight`
  [4,in], `.lora_up.weight` [out,4] (0.3·randn) and `.alpha` (0-dim f32) 2.0 (scale alpha/rank =
  0.5), except double_blocks_1_txt_mlp_0 with NO alpha key (scale 1) and
  single_blocks_1_linear2 with alpha 0.5 (scale 0.125).
lora/flux_kohya_as_peft.safetensors: what diffusers' converter (_convert_kohya_flux_lora_to_diffusers,
  through FluxPipeline.lora_state_dict) makes of flux_kohya: keys
  `transformer.<module>.lora_A.weight` / `.lora_B.weight`, loaded with lora_alpha = rank (scale
  1) because alpha/rank is folded in: scale = alpha/rank (1 without an alpha key);
  scale_down = scale, scale_up = 1; while scale_down·2 < scale_up: scale_down ·= 2,
  scale_up /= 2; A = down·scale_down, B = up·scale_up (scale 0.5 → A·0.5, B·1; scale 0.125 →
  A·0.25, B·0.5; scale 1 → unchanged). Fused layers (img/txt_attn_qkv → to_q,to_k,to_v /
  add_q_proj,add_k_proj,add_v_proj; single linear1 → attn.to_q,to_k,to_v,proj_mlp): the
  (scaled) down is copied to every part, the (scaled) up split by rows [16,16,16] / [16,16,16,64].
  NOTE: diffusers hard-codes linear1's split as [3072, 3072, 3072, 12288] (FLUX.1's size); this
  script patches that one literal to the tiny model's [16, 16, 16, 64] (inner, inner, inner,
  4·inner) before loading, everything else in the converter is diffusers' own.
lora/flux_expected.safetensors: on dev.case0's inputs, [2,12,64] each: `base` (no LoRA, asserted
  equal to dev.case0.sample), `peft` (after FluxPipeline.load_lora_weights of flux_peft into a
  freshly loaded pipeline; asserted equal to the in-memory adapters to 1e-6) and `kohya` (after
  load_lora_weights of flux_kohya into a fresh pipeline; asserted equal to 1e-6 to loading
  flux_kohya_as_peft, and to 1e-5 to merging W += scale·up@down by hand with the mapping above).

Run from the repo root: OMP_NUM_THREADS=1 python tools/golden/make_flux_transformer.py
"""
import copy
import inspect
import json
import os
import struct

import torch
import torch.nn.functional as F
from diffusers import FluxPipeline, FluxTransformer2DModel
from diffusers.loaders import lora_conversion_utils, lora_pipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")
LORA = os.path.join(OUT, "lora")
os.makedirs(LORA, exist_ok=True)
torch.use_deterministic_algorithms(True)

BASE = dict(
    patch_size=1,
    in_channels=64,
    out_channels=None,
    num_layers=2,
    num_single_layers=2,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=24,
    pooled_projection_dim=8,
    axes_dims_rope=(2, 2, 4),
)
VARIANTS = {"dev": dict(BASE, guidance_embeds=True), "schnell": dict(BASE, guidance_embeds=False)}
INNER = BASE["attention_head_dim"] * BASE["num_attention_heads"]
MLP = 4 * INNER
VAE_SCALE = 4  # unpacked 8×6 latents ↔ a 32×24 image


def folder(v):
    return os.path.join(OUT, f"tiny-flux-{v}", "transformer")


def make_model(v, seed):
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**VARIANTS[v])
    with torch.no_grad():
        for name, p in model.named_parameters():
            # RMSNorm weights (norm_q/norm_k/norm_added_q/norm_added_k); the AdaLN `norm*.linear`
            # layers fall in the else branch (random, not zero).
            if name.split(".")[-2].startswith("norm") and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.4 * torch.randn_like(p) / max(1.0, p[0].numel() ** 0.5))
    model.eval()
    return model


def pack(x):
    b, c, h, w = x.shape
    return FluxPipeline._pack_latents(x, b, c, h, w)


def unpack(x, h, w):
    return FluxPipeline._unpack_latents(x, h * VAE_SCALE, w * VAE_SCALE, VAE_SCALE)


def image_ids(h, w):
    """Ids for unpacked h×w latents (a (h/2)×(w/2) packed grid), as FluxPipeline makes them."""
    return FluxPipeline._prepare_latent_image_ids(1, h // 2, w // 2, torch.device("cpu"), torch.float32)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ---- the two folders and their forward cases ----
cases = {}
for seed, v in enumerate(VARIANTS):
    model = make_model(v, seed)
    model.save_pretrained(folder(v), safe_serialization=True)
    path = os.path.join(folder(v), "diffusion_pytorch_model.safetensors")
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys)
    assert sorted(keys) == sorted(k for k, _ in model.named_parameters()), "file keys != parameters"
    assert sorted(os.listdir(folder(v))) == ["config.json", "diffusion_pytorch_model.safetensors"]
    size = sum(os.path.getsize(os.path.join(folder(v), n)) for n in os.listdir(folder(v)))
    assert size < 300_000, (v, size)
    print(f"== tiny-flux-{v}/transformer: {len(keys)} tensors, {sum(p.numel() for p in model.parameters())} "
          f"parameters, {size} bytes")
    for k in sorted(keys):
        print(f"  {k} {list(shapes[k])}")
    g = torch.Generator().manual_seed(100 + seed)
    # case0: standard ids. case1: non-standard img_ids / non-zero txt_ids.
    ids1 = torch.tensor([[1.0, 3 + n // 2, 5 + n % 2] for n in range(4)])
    specs = [(2, 8, 6, 7, [0.8576923, 0.0089286], [3.5, 2.0]), (1, 4, 4, 5, [0.6021505], [2.75])]
    for i, (b, h, w, L, t, gs) in enumerate(specs):
        lat = torch.randn(b, 16, h, w, generator=g)
        x = pack(lat)
        n = (h // 2) * (w // 2)
        assert x.shape == (b, n, 64)
        ehs = torch.randn(b, L, 24, generator=g)
        pooled = torch.randn(b, 8, generator=g)
        ts = torch.tensor(t, dtype=torch.float32)
        std_ids = image_ids(h, w)
        assert torch.equal(std_ids, torch.tensor([[0.0, k // (w // 2), k % (w // 2)] for k in range(n)]))
        if i == 0:
            img_ids, txt_ids = std_ids, torch.zeros(L, 3)
        else:
            img_ids = ids1
            txt_ids = torch.randint(0, 5, (L, 3), generator=g).float()
            assert txt_ids.abs().sum() > 0 and not torch.equal(img_ids, std_ids)
        kw = dict(hidden_states=x, encoder_hidden_states=ehs, pooled_projections=pooled, timestep=ts,
                  txt_ids=txt_ids, img_ids=img_ids)
        if v == "dev":
            kw["guidance"] = torch.tensor(gs, dtype=torch.float32)
        with torch.no_grad():
            out = model(**kw).sample
        assert out.shape == x.shape and torch.isfinite(out).all()
        p = f"{v}.case{i}."
        cases.update({p + k: t for k, t in kw.items()})
        cases[p + "sample"] = out
        print(f"{v} case{i}: max|sample| = {out.abs().max().item():.6g}")
        if i == 1:
            with torch.no_grad():
                std = model(**dict(kw, img_ids=std_ids, txt_ids=torch.zeros(L, 3))).sample
            d = rel(std, out)
            print(f"  {v} case1 with recomputed (standard) ids differs by {d:.3g} (max abs / max abs)")
            assert d > 1e-2, "case1's ids do not matter"
        if v == "dev" and i == 0:
            un = unpack(out, h, w)
            assert un.shape == (2, 16, 8, 6), un.shape
            assert torch.equal(pack(un), out)
            cases[p + "unpacked"] = lat
            cases[p + "sample_unpacked"] = un
path = os.path.join(OUT, "flux_transformer_cases.safetensors")
save_file({k: t.contiguous() for k, t in sorted(cases.items())}, path)
assert os.path.getsize(path) < 400_000
print("flux_transformer_cases:", os.path.getsize(path), "bytes")
for k, t in sorted(cases.items()):
    print(f"  {k} {list(t.shape)}")


# ---- flow-matching training steps ----
SGD = dict(lr=1e-3)
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
DPO_BETA = 100.0
MAPO = dict(beta=0.1, snr_value=0.5, num_train_timesteps=1000)
MAX_NORM = 1.0
STEPS = 2
GUIDANCE = [3.5, 1.0]
H, W, L_TXT = 8, 6, 7


def batch(name, v):
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    b = 2
    out = {
        "chosen": torch.randn(b, 16, H, W, generator=g),
        "rejected": torch.randn(b, 16, H, W, generator=g),
        "noise": torch.randn(b, 16, H, W, generator=g),
        "sigma": torch.tensor([0.7, 0.25], dtype=torch.float32),
        "encoder_hidden_states": torch.randn(b, L_TXT, 24, generator=g),
        "pooled_projections": torch.randn(b, 8, generator=g),
    }
    if v == "dev":
        out["guidance"] = torch.tensor(GUIDANCE, dtype=torch.float32)
    return out


def errors(model, inp, method):
    """Per-row flow-matching errors L (and the model inputs) for [chosen] or [chosen; rejected]."""
    sigma, noise, chosen, rejected = inp["sigma"], inp["noise"], inp["chosen"], inp["rejected"]
    s = sigma.view(-1, 1, 1, 1)
    x_w = (1 - s) * chosen + s * noise
    x_l = (1 - s) * rejected + s * noise
    u_w, u_l = noise - chosen, noise - rejected
    ehs, pooled, gd = inp["encoder_hidden_states"], inp["pooled_projections"], inp.get("guidance")
    if method == "sft":
        x, t, c, pp, target = x_w, sigma, ehs, pooled, u_w
    else:
        x, t = torch.cat([x_w, x_l]), torch.cat([sigma, sigma])
        c, pp = torch.cat([ehs, ehs]), torch.cat([pooled, pooled])
        target = torch.cat([u_w, u_l])
        gd = None if gd is None else torch.cat([gd, gd])
    kw = dict(hidden_states=pack(x), encoder_hidden_states=c, pooled_projections=pp, timestep=t,
              img_ids=image_ids(H, W), txt_ids=torch.zeros(L_TXT, 3), guidance=gd)
    pred = unpack(model(**kw).sample, H, W)
    assert pred.shape == target.shape
    return (pred.float() - target.float()).pow(2).mean(dim=[1, 2, 3]), kw, target


def mapo_f(z):
    return torch.where(z == 0, torch.ones_like(z), z / torch.expm1(z))


def mapo_margin(errs, T):
    lw, ll = errs.chunk(2)
    sv = MAPO["snr_value"]
    return T * (mapo_f(sv * lw) - mapo_f(sv * ll))


def train_case(name, v, method, optim, mapo=None):
    model = FluxTransformer2DModel.from_pretrained(folder(v), torch_dtype=torch.float32)
    model.train()
    ref = copy.deepcopy(model).eval().requires_grad_(False) if method == "dpo" else None
    inp = batch(name, v)
    if optim == "adamw":
        opt = torch.optim.AdamW(model.parameters(), **ADAMW)
        hp = ADAMW
    else:
        opt = torch.optim.SGD(model.parameters(), **SGD)
        hp = SGD
    losses, norms = [], []
    for _ in range(STEPS):
        errs, kw, target = errors(model, inp, method)
        if method == "sft":
            loss = errs.mean()
        elif method == "mapo":
            lw, _ = errs.chunk(2)
            margin = mapo_margin(errs, mapo["num_train_timesteps"])
            loss = lw.mean() - mapo["beta"] * F.logsigmoid(margin).mean()
            print(f"  {name} margin {margin.tolist()}")
        else:
            with torch.no_grad():
                rp = unpack(ref(**kw).sample, H, W)
            rerrs = (rp.float() - target.float()).pow(2).mean(dim=[1, 2, 3])
            lw, ll = errs.chunk(2)
            rw, rl = rerrs.chunk(2)
            inside = -0.5 * DPO_BETA * ((lw - ll) - (rw - rl))
            loss = -F.logsigmoid(inside).mean()
            print(f"  {name} inside {inside.tolist()}")
        print(f"  {name} errors {errs.tolist()}")
        opt.zero_grad()
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM))
        opt.step()
        losses.append(loss.detach())
    out = dict(inp)
    out["expected.loss"] = torch.stack(losses)
    out["expected.grad_norm"] = torch.stack(norms)
    for k, p in model.named_parameters():
        out[f"expected.after.{k}"] = p.detach().clone()
    meta = {"model": f"tiny-flux-{v}/transformer", "method": method, "optimizer": optim, "steps": str(STEPS),
            "max_grad_norm": str(MAX_NORM), "timestep": "sigma (the model multiplies it by 1000)",
            "img_ids": "FluxPipeline._prepare_latent_image_ids (4x3 packed grid)", "txt_ids": "zeros [7,3]",
            "loss_layout": "prediction unpacked to [B,16,8,6], compared with the unpacked target",
            **{f"optim.{k}": str(val) for k, val in hp.items()}}
    if v == "dev":
        meta["guidance"] = json.dumps(GUIDANCE)
    if method == "dpo":
        meta["beta"] = str(DPO_BETA)
    if method == "mapo":
        meta.update({k: str(val) for k, val in mapo.items() if k != "margin_at_T1000"})
        meta["margin_at_T1000"] = json.dumps(mapo["margin_at_T1000"])
    path = os.path.join(OUT, f"{name}.safetensors")
    # One metadata key (safetensors writes several in hash order, so the bytes would vary).
    save_file({k: t.contiguous() for k, t in out.items()}, path,
              metadata={"hyperparameters": json.dumps(meta, sort_keys=True)})
    assert all(torch.isfinite(t).all() for t in out.values())
    assert os.path.getsize(path) < 400_000
    print(name, [l.item() for l in losses], [n.item() for n in norms], os.path.getsize(path), "bytes")
    return losses


def mapo_choice(name, v):
    """MaPO settings for `name`: T = 1000 unless the first step's margin saturates there."""
    model = FluxTransformer2DModel.from_pretrained(folder(v), torch_dtype=torch.float32).train()
    with torch.no_grad():
        errs, _, _ = errors(model, batch(name, v), "mapo")
    m1000 = mapo_margin(errs, 1000)
    print(f"  {name} probe: errors {errs.tolist()}, margin at T=1000 {m1000.tolist()}")
    cfg = dict(MAPO, margin_at_T1000=[round(x, 6) for x in m1000.tolist()])
    if m1000.abs().max() > 30:
        cfg["num_train_timesteps"] = 100
        m100 = mapo_margin(errs, 100)
        print(f"  saturated: using T=100, margin {m100.tolist()}")
        assert m100.abs().max() < 30, "still saturated at T=100"
    return cfg


train_case("flux_train_sft_sgd", "schnell", "sft", "sgd")
train_case("flux_dev_train_sft_adamw", "dev", "sft", "adamw")
dpo = train_case("flux_dev_train_dpo_sgd", "dev", "dpo", "sgd")
assert abs(dpo[0].item() - torch.log(torch.tensor(2.0)).item()) < 1e-6 and dpo[1] != dpo[0]
train_case("flux_dev_train_mapo_adamw", "dev", "mapo", "adamw", mapo_choice("flux_dev_train_mapo_adamw", "dev"))


# ---- LoRAs ----
P = "dev.case0."
inputs = {k: cases[P + k] for k in ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep",
                                    "img_ids", "txt_ids", "guidance")}


def load_pipe():
    t = FluxTransformer2DModel.from_pretrained(folder("dev"), torch_dtype=torch.float32)
    return FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=t)


def run(transformer):
    transformer.eval()
    with torch.no_grad():
        return transformer(**inputs).sample


def sort_metadata(path):
    """Rewrites the file's header with `__metadata__`'s entries in sorted order (in place).

    safetensors keeps the metadata in a Rust HashMap, so `format` and `lora_adapter_metadata`
    come out in either order from run to run; nothing else in the file changes.
    """
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    text = data[8:8 + n].decode("utf-8")
    header = json.loads(text)
    dump = lambda h: json.dumps(h, separators=(",", ":"), ensure_ascii=False)
    # Python writes the header exactly as safetensors did (then the padding to 8 bytes).
    assert dump(header) == text.rstrip(" "), "header not in safetensors' own layout"
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    new = dump(header).encode("utf-8")
    new += b" " * (n - len(new))
    assert len(new) == n
    with open(path, "wb") as f:
        f.write(data[:8] + new + data[8 + n:])


pipe = load_pipe()
expected = {"base": run(pipe.transformer)}
err = rel(expected["base"], cases[P + "sample"])
print(f"base vs dev.case0.sample: {err:.2e} (relative)")
assert err < 1e-6, "base differs from dev.case0.sample"

# -- PEFT LoRA, made and saved the way diffusers' train_dreambooth_lora_flux.py does it.
torch.manual_seed(7)
STD = 0.2
WEIGHTS = "flux_peft.safetensors"
targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
           "proj_mlp", "proj_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=targets)
pipe.transformer.add_adapter(config)
with torch.no_grad():
    for name, p in sorted(pipe.transformer.named_parameters()):
        if "lora_" in name:
            p.copy_(torch.randn_like(p) * STD)
matched = sorted(n for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0)
print(f"PEFT matched {len(matched)} modules:")
for n in matched:
    print(f"  {n}")
assert "proj_out" in matched and "single_transformer_blocks.0.proj_out" in matched
layers = get_peft_model_state_dict(pipe.transformer)
meta = pipe.transformer.peft_config["default"].to_dict()
# to_dict keeps target_modules a set, which diffusers turns into a list in set order (string
# hashes: differs from run to run); a sorted list makes the file reproducible.
meta["target_modules"] = sorted(meta["target_modules"])
FluxPipeline.save_lora_weights(LORA, transformer_lora_layers=layers, weight_name=WEIGHTS,
                               transformer_lora_adapter_metadata=meta)
direct = run(pipe.transformer)
sort_metadata(os.path.join(LORA, WEIGHTS))
with safe_open(os.path.join(LORA, WEIGHTS), "pt") as f:
    file_meta = f.metadata()
    saved = {k: f.get_tensor(k) for k in f.keys()}
print("metadata keys:", sorted(file_meta))
print("lora_adapter_metadata:", file_meta["lora_adapter_metadata"])
modules = sorted(k[len("transformer."):-len(".lora_A.weight")] for k in saved if k.endswith(".lora_A.weight"))
assert len(saved) == 2 * len(modules) and modules == matched
print(f"{len(saved)} tensors")
pipe2 = load_pipe()
pipe2.load_lora_weights(LORA, weight_name=WEIGHTS)
expected["peft"] = run(pipe2.transformer)
err = rel(expected["peft"], direct)
print(f"peft file through load_lora_weights vs the adapters in memory: {err:.2e}")
assert err < 1e-6
change = ((expected["peft"] - expected["base"]).norm() / expected["base"].norm()).item()
print(f"the PEFT LoRA changes the output by {change:.3f} (relative L2)")
assert change >= 0.05

# -- kohya / BFL layout.
# diffusers splits single-block linear1 with FLUX.1's hard-coded sizes; use the tiny model's.
src = inspect.getsource(lora_conversion_utils._convert_kohya_flux_lora_to_diffusers)
LIT = "dims=[3072, 3072, 3072, 12288]"
assert src.count(LIT) == 1
ns = dict(vars(lora_conversion_utils))
exec(compile(src.replace(LIT, f"dims=[{INNER}, {INNER}, {INNER}, {MLP}]"), "<patched converter>", "exec"), ns)
lora_conversion_utils._convert_kohya_flux_lora_to_diffusers = ns["_convert_kohya_flux_lora_to_diffusers"]
lora_pipeline._convert_kohya_flux_lora_to_diffusers = ns["_convert_kohya_flux_lora_to_diffusers"]

# kohya suffix -> ([diffusers modules relative to the block], in features, [out split])
DOUBLE = {
    "img_attn_qkv": (["attn.to_q", "attn.to_k", "attn.to_v"], INNER, [INNER] * 3),
    "img_attn_proj": (["attn.to_out.0"], INNER, [INNER]),
    "img_mlp_0": (["ff.net.0.proj"], INNER, [MLP]),
    "img_mlp_2": (["ff.net.2"], MLP, [INNER]),
    "img_mod_lin": (["norm1.linear"], INNER, [6 * INNER]),
    "txt_attn_qkv": (["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"], INNER, [INNER] * 3),
    "txt_attn_proj": (["attn.to_add_out"], INNER, [INNER]),
    "txt_mlp_0": (["ff_context.net.0.proj"], INNER, [MLP]),
    "txt_mlp_2": (["ff_context.net.2"], MLP, [INNER]),
    "txt_mod_lin": (["norm1_context.linear"], INNER, [6 * INNER]),
}
SINGLE = {
    "linear1": (["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], INNER, [INNER] * 3 + [MLP]),
    "linear2": (["proj_out"], INNER + MLP, [INNER]),
    "modulation_lin": (["norm.linear"], INNER, [3 * INNER]),
}
RANK, ALPHA, KSTD = 4, 2.0, 0.3
ALPHAS = {"lora_unet_double_blocks_1_txt_mlp_0": None, "lora_unet_single_blocks_1_linear2": 0.5}
g = torch.Generator().manual_seed(11)
kohya, plan = {}, []
for kind, table, n in (("double_blocks", DOUBLE, BASE["num_layers"]),
                       ("single_blocks", SINGLE, BASE["num_single_layers"])):
    block = "transformer_blocks" if kind == "double_blocks" else "single_transformer_blocks"
    for i in range(n):
        for suffix, (mods, fin, split) in table.items():
            key = f"lora_unet_{kind}_{i}_{suffix}"
            down = torch.randn(RANK, fin, generator=g) * KSTD
            up = torch.randn(sum(split), RANK, generator=g) * KSTD
            kohya[key + ".lora_down.weight"] = down
            kohya[key + ".lora_up.weight"] = up
            alpha = ALPHAS.get(key, ALPHA)
            if alpha is not None:
                kohya[key + ".alpha"] = torch.tensor(alpha, dtype=torch.float32)
            plan.append((key, [f"{block}.{i}.{m}" for m in mods], split, down, up,
                         (alpha if alpha is not None else RANK) / RANK))
KOHYA = "flux_kohya.safetensors"
save_file({k: t.contiguous() for k, t in sorted(kohya.items())}, os.path.join(LORA, KOHYA))

converted = FluxPipeline.lora_state_dict(os.path.join(LORA, KOHYA))
assert all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in converted)
print(f"kohya file: {len(kohya)} tensors -> {len(converted)} diffusers tensors")
for key, mods, split, down, up, scale in plan:
    sd, su = scale, 1.0
    while sd * 2 < su:
        sd, su = sd * 2, su / 2
    ups = torch.split(up, split, dim=0)
    for m, u in zip(mods, ups):
        a, b = converted[f"transformer.{m}.lora_A.weight"], converted[f"transformer.{m}.lora_B.weight"]
        assert torch.allclose(a, down * sd, rtol=0, atol=1e-7) and torch.allclose(b, u * su, rtol=0, atol=1e-7), key
    print(f"  {key} (scale {scale}: A = down*{sd}, B = up*{su}) -> {', '.join(mods)}"
          + (f" (up rows split {split}, down copied)" if len(mods) > 1 else ""))
assert len(converted) == 2 * sum(len(p[1]) for p in plan)
AS_PEFT = "flux_kohya_as_peft.safetensors"
save_file({k: t.clone().contiguous() for k, t in sorted(converted.items())}, os.path.join(LORA, AS_PEFT))

pipe3 = load_pipe()
pipe3.load_lora_weights(os.path.join(LORA, KOHYA))
expected["kohya"] = run(pipe3.transformer)
pipe4 = load_pipe()
pipe4.load_lora_weights(os.path.join(LORA, AS_PEFT))
err = rel(run(pipe4.transformer), expected["kohya"])
print(f"kohya vs flux_kohya_as_peft through load_lora_weights: {err:.2e}")
assert err < 1e-6
# Independent check of the mapping: merge W += scale · up_part @ down by hand.
merged = FluxTransformer2DModel.from_pretrained(folder("dev"), torch_dtype=torch.float32)
with torch.no_grad():
    for key, mods, split, down, up, scale in plan:
        for m, u in zip(mods, torch.split(up, split, dim=0)):
            merged.get_submodule(m).weight += scale * (u @ down)
err = rel(run(merged), expected["kohya"])
print(f"kohya vs merging scale*up@down by hand: {err:.2e}")
assert err < 1e-5
change = ((expected["kohya"] - expected["base"]).norm() / expected["base"].norm()).item()
print(f"the kohya LoRA changes the output by {change:.3f} (relative L2)")
assert change >= 0.05

save_file({k: t.contiguous() for k, t in expected.items()}, os.path.join(LORA, "flux_expected.safetensors"))
for k, t in expected.items():
    print(f"expected {k} {list(t.shape)} max|.| {t.abs().max().item():.6g}")
for name in (WEIGHTS, KOHYA, AS_PEFT, "flux_expected.safetensors"):
    size = os.path.getsize(os.path.join(LORA, name))
    assert size < 400_000, (name, size)
    print(f"lora/{name}: {size} bytes")
