"""Tiny SD3 / SD3.5 MMDiT transformers, their forward outputs and flow-matching train steps.

Writes to tests/fixtures/ (all tensors f32):

tiny-sd3/transformer/, tiny-sd35/transformer/: diffusers SD3Transformer2DModel folders
  (save_pretrained, safetensors). Both: sample_size 8, patch_size 2, in/out channels 16,
  3 layers, 2 heads of 8 (inner dim 16 = caption_projection_dim), joint_attention_dim 24,
  pooled_projection_dim 20, pos_embed_max_size 12. tiny-sd3: no dual attention, no qk norm;
  tiny-sd35: dual_attention_layers (0, 1) and qk_norm "rms_norm". Every parameter is random
  (0.4·randn/√fan_in; RMSNorm weights 1 + 0.1·randn), the AdaLN `linear`s and `proj_out`
  included, so every gate is non-zero. The `pos_embed.pos_embed` buffer [1,144,16] is kept as
  diffusers builds it (it is persistent, hence in the file, because pos_embed_max_size is set).

sd3_transformer_cases.safetensors: for v in (sd3, sd35) and i in (0, 1):
  `{v}.case{i}.hidden_states` [B,16,h,w], `.encoder_hidden_states` [B,L,24],
  `.pooled_projections` [B,20], `.timestep` [B] (f32, σ·1000, non-integer) and `.sample`
  (model(...).sample, eval, no_grad); case0 B=2, 8×6 latents, L=7; case1 B=1, 4×4, L=5.
  `{v}.pos_embed_full` [144,16]: get_2d_sincos_pos_embed(16, 12, base_size=4,
  interpolation_scale=1) recomputed (asserted equal to the saved buffer).

sd3_train_sft_sgd (tiny-sd3), sd35_train_sft_adamw, sd35_train_dpo_sgd, sd35_train_mapo_adamw
  (.safetensors): the flow-matching training step of docs/design.md §2b, 2 steps on one
  fixed batch, starting from the folder above (from_pretrained, train mode).
  Inputs: `chosen`, `rejected`, `noise` [2,16,8,6], `sigma` [2] (shared by the pair),
  `encoder_hidden_states` [2,7,24], `pooled_projections` [2,20].
  Step: x_σ = (1−σ)·x₀ + σ·ε (same ε for both images of a pair); SFT runs the chosen rows
  only, DPO/MaPO the batch [chosen rows; rejected rows] with the text inputs repeated;
  timestep = σ·1000 (f32); target u = ε − x₀; per-row L = mean over (C,h,w) of (v − u)² in
  f32. SFT: mean(L_w). Flow-DPO (β 100, reference = the frozen initial transformer):
  −logsigmoid(−β/2·((L_w − L_l) − (R_w − R_l))).mean(). MaPO (β 0.1, snr_value s 0.5,
  num_train_timesteps T 1000): margin = T·(f(s·L_w) − f(s·L_l)), f(x) = x/(eˣ − 1);
  loss = mean(L_w) − β·logsigmoid(margin).mean(). Then backward, clip_grad_norm_(1.0),
  optimiser step. SGD: lr 1e-3, no momentum. AdamW: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
  weight_decay 1e-2.
  Outputs (as train_*.safetensors for the SDXL UNet): `expected.loss` [2] (each step's loss,
  before its update), `expected.grad_norm` [2] (clip_grad_norm_'s total norm, before
  clipping), and `expected.after.<name>` for EVERY trainable parameter, named as in the
  state dict (the `pos_embed.pos_embed` buffer excluded; the parameters before the steps
  are the model folder's). The hyperparameters are also in the file's metadata, as one JSON
  string under the key `hyperparameters`.

Run from the repo root: OMP_NUM_THREADS=1 python tools/golden/make_sd3_transformer.py
"""
import copy
import json
import os

import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from safetensors import safe_open
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures")
torch.use_deterministic_algorithms(True)

BASE = dict(
    sample_size=8,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=24,
    caption_projection_dim=16,  # = heads · head_dim
    pooled_projection_dim=20,
    pos_embed_max_size=12,
)
VARIANTS = {
    "sd3": dict(BASE, dual_attention_layers=(), qk_norm=None),
    "sd35": dict(BASE, dual_attention_layers=(0, 1), qk_norm="rms_norm"),
}


def folder(v):
    return os.path.join(OUT, f"tiny-{v}", "transformer")


def make_model(v, seed):
    torch.manual_seed(seed)
    model = SD3Transformer2DModel(**VARIANTS[v])
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Affine norm weights (RMSNorm norm_q/norm_k/norm_added_q/norm_added_k); the AdaLN
            # `norm*.linear` layers fall in the else branch (random, not zero).
            if name.split(".")[-2].startswith("norm") and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.4 * torch.randn_like(p) / max(1.0, p[0].numel() ** 0.5))
    model.eval()
    return model


def pos_embed_full():
    c = BASE
    return get_2d_sincos_pos_embed(
        embed_dim=c["attention_head_dim"] * c["num_attention_heads"],
        grid_size=c["pos_embed_max_size"],
        base_size=c["sample_size"] // c["patch_size"],
        interpolation_scale=1,
        output_type="pt",
    ).float()


# ---- the two folders and their forward cases ----
cases = {}
for seed, v in enumerate(VARIANTS):
    model = make_model(v, seed)
    model.save_pretrained(folder(v), safe_serialization=True)
    path = os.path.join(folder(v), "diffusion_pytorch_model.safetensors")
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        assert "pos_embed.pos_embed" in keys, "pos_embed buffer not saved"
        saved_pe = f.get_tensor("pos_embed.pos_embed")
        assert all(f.get_tensor(k).dtype == torch.float32 for k in keys)
    size = sum(os.path.getsize(os.path.join(folder(v), n)) for n in os.listdir(folder(v)))
    assert size < 300_000, (v, size)
    print(f"== tiny-{v}/transformer: {len(keys)} tensors, {sum(p.numel() for p in model.parameters())} "
          f"parameters, {size} bytes")
    for k in sorted(keys):
        print(f"  {k} {list(shapes[k])}")
    pe = pos_embed_full()
    assert torch.equal(pe, saved_pe[0]), "recomputed pos_embed differs from the saved buffer"
    assert torch.equal(pe, model.pos_embed.pos_embed[0])
    cases[f"{v}.pos_embed_full"] = pe
    g = torch.Generator().manual_seed(100 + seed)
    for i, (b, h, w, L, t) in enumerate([(2, 8, 6, 7, [857.6923, 8.9286]), (1, 4, 4, 5, [602.1505])]):
        x = torch.randn(b, 16, h, w, generator=g)
        ehs = torch.randn(b, L, 24, generator=g)
        pooled = torch.randn(b, 20, generator=g)
        ts = torch.tensor(t, dtype=torch.float32)
        with torch.no_grad():
            out = model(hidden_states=x, encoder_hidden_states=ehs, pooled_projections=pooled,
                        timestep=ts).sample
        assert out.shape == x.shape
        p = f"{v}.case{i}."
        cases.update({p + "hidden_states": x, p + "encoder_hidden_states": ehs,
                      p + "pooled_projections": pooled, p + "timestep": ts, p + "sample": out})
        print(f"{v} case{i}: max|sample| = {out.abs().max().item():.6g}")
save_file({k: v.contiguous() for k, v in cases.items()}, os.path.join(OUT, "sd3_transformer_cases.safetensors"))


# ---- flow-matching training steps ----
SGD = dict(lr=1e-3)
ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
DPO_BETA = 100.0
MAPO = dict(beta=0.1, snr_value=0.5, num_train_timesteps=1000)
MAX_NORM = 1.0
STEPS = 2


def train_case(name, v, method, optim):
    model = SD3Transformer2DModel.from_pretrained(folder(v), torch_dtype=torch.float32)
    model.train()
    ref = copy.deepcopy(model).eval().requires_grad_(False) if method == "dpo" else None
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    b = 2
    chosen = torch.randn(b, 16, 8, 6, generator=g)
    rejected = torch.randn(b, 16, 8, 6, generator=g)
    noise = torch.randn(b, 16, 8, 6, generator=g)
    sigma = torch.tensor([0.7, 0.25], dtype=torch.float32)
    ehs = torch.randn(b, 7, 24, generator=g)
    pooled = torch.randn(b, 20, generator=g)
    if optim == "adamw":
        opt = torch.optim.AdamW(model.parameters(), **ADAMW)
        hp = ADAMW
    else:
        opt = torch.optim.SGD(model.parameters(), **SGD)
        hp = SGD
    s = sigma.view(-1, 1, 1, 1)
    losses, norms = [], []
    for _ in range(STEPS):
        x_w = (1 - s) * chosen + s * noise
        x_l = (1 - s) * rejected + s * noise
        u_w, u_l = noise - chosen, noise - rejected
        if method == "sft":
            x, t, c, pp, target = x_w, sigma * 1000, ehs, pooled, u_w
        else:
            x = torch.cat([x_w, x_l])
            t = torch.cat([sigma * 1000, sigma * 1000])
            c, pp = torch.cat([ehs, ehs]), torch.cat([pooled, pooled])
            target = torch.cat([u_w, u_l])
        pred = model(hidden_states=x, encoder_hidden_states=c, pooled_projections=pp, timestep=t).sample
        errs = (pred.float() - target.float()).pow(2).mean(dim=[1, 2, 3])
        if method == "sft":
            loss = errs.mean()
        elif method == "mapo":
            lw, ll = errs.chunk(2)
            sv, T, beta = MAPO["snr_value"], MAPO["num_train_timesteps"], MAPO["beta"]

            def f(z):
                return torch.where(z == 0, torch.ones_like(z), z / torch.expm1(z))

            margin = T * (f(sv * lw) - f(sv * ll))
            loss = lw.mean() - beta * F.logsigmoid(margin).mean()
            print(f"  {name} margin {margin.tolist()}")
        else:
            with torch.no_grad():
                rp = ref(hidden_states=x, encoder_hidden_states=c, pooled_projections=pp, timestep=t).sample
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
    out = {"chosen": chosen, "rejected": rejected, "noise": noise, "sigma": sigma,
           "encoder_hidden_states": ehs, "pooled_projections": pooled,
           "expected.loss": torch.stack(losses), "expected.grad_norm": torch.stack(norms)}
    for k, p in model.named_parameters():
        out[f"expected.after.{k}"] = p.detach().clone()
    meta = {"model": f"tiny-{v}/transformer", "method": method, "optimizer": optim, "steps": str(STEPS),
            "max_grad_norm": str(MAX_NORM), **{f"optim.{k}": str(val) for k, val in hp.items()}}
    if method == "dpo":
        meta["beta"] = str(DPO_BETA)
    if method == "mapo":
        meta.update({k: str(val) for k, val in MAPO.items()})
    path = os.path.join(OUT, f"{name}.safetensors")
    # One metadata key (safetensors writes several in hash order, so the bytes would vary).
    save_file({k: t.contiguous() for k, t in out.items()}, path, metadata={"hyperparameters": json.dumps(meta)})
    print(name, [l.item() for l in losses], [n.item() for n in norms], os.path.getsize(path), "bytes")


train_case("sd3_train_sft_sgd", "sd3", "sft", "sgd")
train_case("sd35_train_sft_adamw", "sd35", "sft", "adamw")
train_case("sd35_train_dpo_sgd", "sd35", "dpo", "sgd")
train_case("sd35_train_mapo_adamw", "sd35", "mapo", "adamw")
