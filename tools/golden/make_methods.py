"""Parity fixtures for every method behind the loss trait (docs/design.md §4 and §4b).

methods.safetensors: for each loss case of losses.safetensors (its model_pred, target and
  ref_pred, read back so that both fixtures share inputs), each method's loss and metrics,
  computed in float64 with the official formulas: Diffusion-DPO and diffusers' DPO script
  (sigmoid / ipo / hinge), the Diffusion-SDPO repository (dmpo, dspo with its SDXL branch),
  Diffusion-KTO (sigmoid halo), MaPO; plus the diagnostics mapo logs for every method.
train_methods.safetensors: one fixed batch and, per new method, two SGD steps of the tiny
  diffusers UNet (DDPMScheduler.add_noise, clip_grad_norm_ 1.0, torch.optim.SGD lr 1e-2):
  the loss and a subset of parameters before and after.

Run from the repo root after make_unet_vae.py and make_losses_train.py:
  OMP_NUM_THREADS=1 python3 tools/golden/make_methods.py [OUT]
"""
import os
import sys

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
torch.use_deterministic_algorithms(True)


def per_sample(pred, target):
    return (pred - target).pow(2).mean(dim=[1, 2, 3])


def dpo_inside(pred, target, ref, beta):
    lw, ll = per_sample(pred, target).chunk(2)
    rw, rl = per_sample(ref, target).chunk(2)
    return -0.5 * beta * ((lw - ll) - (rw - rl))


# ---- each method's loss, as its official code computes it ----
def sft(pred, target, ref):
    return per_sample(pred, target).chunk(2)[0].mean(), {}


def dpo(pred, target, ref, beta=5000.0):
    return -F.logsigmoid(dpo_inside(pred, target, ref, beta)).mean(), {}


def ipo(pred, target, ref, beta=5000.0):
    # diffusers train_diffusion_dpo.py, loss_type="ipo" (its undefined `args.beta` is the DPO β).
    return ((dpo_inside(pred, target, ref, beta) - 1 / (2 * beta)) ** 2).mean(), {}


def dpo_hinge(pred, target, ref, beta=5000.0):
    return torch.relu(1 - dpo_inside(pred, target, ref, beta)).mean(), {}


def dmpo(pred, target, ref, beta=6000.0, alpha=0.01):
    ut = dpo_inside(pred, target, ref, beta)
    p = torch.sigmoid(ut)
    q = p.new_tensor([1.0 - alpha]).clamp(1e-6, 1 - 1e-6)
    log_p, log_1mp = -F.softplus(-ut), -F.softplus(ut)
    return (p * (log_p - torch.log(q)) + (1 - p) * (log_1mp - torch.log1p(-q))).mean(), {}


def dspo(pred, target, ref, beta=5000.0):
    inside = dpo_inside(pred, target, ref, beta)
    pred2, _ = (pred - ref.detach()).chunk(2)
    far = pred2.pow(2).mean(dim=[1, 2, 3]).mean() >= 0.1
    if far:
        loss = ((1 - torch.sigmoid(inside)[:, None, None, None]) * pred2).pow(2).mean(dim=[1, 2, 3]).mean()
    else:
        loss = (1 - torch.sigmoid(inside)[:, None, None, None]).pow(2).mean(dim=[1, 2, 3]).mean()
    return loss, {"dspo_far": torch.tensor(float(far), dtype=pred.dtype)}


def kto(pred, target, ref, beta=1000.0, lambda_d=1.0, lambda_u=1.0):
    # Diffusion-KTO, halo "sigmoid": pair rows are one desirable + one undesirable sample.
    model_losses, ref_losses = per_sample(pred, target), per_sample(ref, target)
    b = model_losses.shape[0] // 2
    y = torch.cat([torch.ones(b), torch.zeros(b)]).to(pred.dtype)
    g = ref_losses.detach() - model_losses
    k = torch.clamp(g.mean(), min=0).detach()
    h = torch.sigmoid((2 * y - 1) * beta * (g - k))
    return ((lambda_d * y + lambda_u * (1 - y)) * (1 - h)).mean(), {"kl_estimate": k}


def mapo(pred, target, ref, beta=0.1, snr=0.5, T=1000.0):
    lw, ll = per_sample(pred, target).chunk(2)

    def f(x):
        return torch.where(x == 0, torch.ones_like(x), x / torch.expm1(x))

    margin = T * (f(snr * lw) - f(snr * ll))
    return lw.mean() - beta * F.logsigmoid(margin).mean(), {"margin": margin.mean()}


# name in the fixture -> (registry name, formula, parameters as mapo takes them, uses rejected, uses reference)
METHODS = {
    "sft": ("sft", sft, {}, False, False),
    "dpo": ("dpo", dpo, {}, True, True),
    "mapo": ("mapo", mapo, {}, True, False),
    "mapo_b1_s2": ("mapo", lambda *a: mapo(*a, beta=1.0, snr=2.0), {"beta": 1, "snr_value": 2}, True, False),
    "ipo": ("ipo", ipo, {}, True, True),
    "ipo_b1000": ("ipo", lambda *a: ipo(*a, beta=1000.0), {"beta": 1000}, True, True),
    "dpo_hinge": ("dpo_hinge", dpo_hinge, {}, True, True),
    "dmpo": ("dmpo", dmpo, {}, True, True),
    "dmpo_a0.2": ("dmpo", lambda *a: dmpo(*a, beta=2000.0, alpha=0.2), {"beta": 2000, "alpha": 0.2}, True, True),
    "dspo": ("dspo", dspo, {}, True, True),
    "kto": ("kto", kto, {}, True, True),
    "kto_l2": ("kto", lambda *a: kto(*a, beta=500.0, lambda_d=2.0, lambda_u=0.5),
               {"beta": 500, "lambda_d": 2, "lambda_u": 0.5}, True, True),
}


def diagnostics(pred, target, ref, rejected, reference):
    lw, ll = per_sample(pred, target).chunk(2)
    rw, rl = per_sample(ref, target).chunk(2)
    out = {"chosen_loss": lw.mean()}
    if not rejected:
        return out
    out["rejected_loss"] = ll.mean()
    gap = (lw - ll) - (rw - rl) if reference else (lw - ll)
    out["implicit_acc"] = ((gap < 0).double() + 0.5 * (gap == 0).double()).mean()
    if reference:
        out["ref_chosen_loss"], out["ref_rejected_loss"] = rw.mean(), rl.mean()
        out["reward_margin"] = -gap.mean()
        out["chosen_vs_ref"], out["rejected_vs_ref"] = (lw - rw).mean(), (ll - rl).mean()
    return out


def loss_fixture():
    inputs = load_file(os.path.join(OUT, "losses.safetensors"))
    cases = sorted({k.split(".")[0] for k in inputs})
    out = {}
    for case in cases:
        pred, target, ref = (inputs[f"{case}.{n}"].double() for n in ("model_pred", "target", "ref_pred"))
        for key, (_, formula, _, rejected, reference) in METHODS.items():
            loss, metrics = formula(pred, target, ref)
            metrics = {**diagnostics(pred, target, ref, rejected, reference), **metrics}
            out[f"{case}.{key}.loss"] = loss.reshape(1)
            for k, v in metrics.items():
                out[f"{case}.{key}.{k}"] = v.reshape(1).double()
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "methods.safetensors"))
    print("methods:", len(cases), "cases,", len(METHODS), "methods")


KEEP = [
    "conv_in.weight",
    "time_embedding.linear_1.bias",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "mid_block.resnets.0.norm1.weight",
    "up_blocks.0.attentions.1.proj_out.weight",
    "conv_out.weight",
]


def train_fixture():
    root = os.path.join(OUT, "tiny-sdxl", "unet")
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    g = torch.Generator().manual_seed(4242)
    b = 2
    chosen = torch.randn(b, 4, 8, 8, generator=g)
    rejected = torch.randn(b, 4, 8, 8, generator=g)
    noise = torch.randn(b, 4, 8, 8, generator=g)
    timestep = torch.tensor([300, 800])
    ehs = torch.randn(b, 77, 48, generator=g)
    text_embeds = torch.randn(b, 32, generator=g)
    time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], [768.0, 1360.0, 32.0, 64.0, 1024.0, 1024.0]])
    out = {"chosen": chosen, "rejected": rejected, "noise": noise, "timestep": timestep,
           "encoder_hidden_states": ehs, "text_embeds": text_embeds, "time_ids": time_ids}
    x = torch.cat([sched.add_noise(chosen, noise, timestep), sched.add_noise(rejected, noise, timestep)])
    t = torch.cat([timestep, timestep])
    c, cond = torch.cat([ehs, ehs]), {"text_embeds": torch.cat([text_embeds] * 2), "time_ids": torch.cat([time_ids] * 2)}
    target = torch.cat([noise, noise])
    ref = UNet2DConditionModel.from_pretrained(root, torch_dtype=torch.float32).eval().requires_grad_(False)
    with torch.no_grad():
        ref_pred = ref(x, t, c, added_cond_kwargs=cond).sample
    # IPO at β 100: its first-step target 1/(2β) must dwarf the ~1e-5·β/5000 by which the
    # policy and reference errors differ in mapo (fused vs autodiff attention); at β 5000 that
    # difference is 14% of the target, and the formula itself is checked at β 5000 above.
    train = {"ipo_b100": lambda *a: ipo(*a, beta=100.0), "dpo_hinge": dpo_hinge, "dmpo": dmpo, "dspo": dspo, "kto": kto}
    for name, formula in train.items():
        unet = UNet2DConditionModel.from_pretrained(root, torch_dtype=torch.float32)
        unet.train()
        opt = torch.optim.SGD(unet.parameters(), lr=1e-2)
        before = {k: v.detach().clone() for k, v in unet.named_parameters() if k in KEEP}
        # Two steps: on the first the policy is the reference (z = 0); the second is not.
        losses, norms = [], []
        for _ in range(2):
            pred = unet(x, t, c, added_cond_kwargs=cond).sample
            loss, _ = formula(pred.float(), target, ref_pred)
            opt.zero_grad()
            loss.backward()
            norms.append(torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0))
            opt.step()
            losses.append(loss.detach())
        out[f"{name}.loss"] = torch.stack(losses)
        out[f"{name}.grad_norm"] = torch.stack(norms)
        for k, v in unet.named_parameters():
            if k in KEEP:
                out[f"{name}.before.{k}"] = before[k]
                out[f"{name}.after.{k}"] = v.detach().clone()
        print(name, [l.item() for l in losses], [n.item() for n in norms])
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "train_methods.safetensors"))


loss_fixture()
train_fixture()
