"""Parity fixtures for the losses and the training step.

losses.safetensors: per case, model_pred/target/ref_pred [2B,4,8,8] (f32) and the official
  formulas' values computed in float64 from those f32 tensors (SFT, Diffusion-DPO, MaPO),
  at realistic scales (L ~ 0.1, pair gaps ~ 1e-3) and at the edges (L = 0, large gaps).
train_*.safetensors: a fixed batch, and after N steps of the official recipe on the tiny
  UNet (diffusers UNet, DDPMScheduler.add_noise, clip_grad_norm_, torch.optim) the losses
  and a subset of parameters (all 2M would not be a small fixture).

Run from the repo root after make_unet_vae.py:
  OMP_NUM_THREADS=1 python3 tools/golden/make_losses_train.py [OUT] [--losses-only]
"""
import os
import sys

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file

OUT = next((a for a in sys.argv[1:] if not a.startswith("--")), "tests/fixtures")
torch.manual_seed(1)
torch.use_deterministic_algorithms(True)


# ---- the official formulas (MaPO repo / Diffusion-DPO repo), evaluated in float64 ----
def per_sample(pred, target):
    return (pred.double() - target.double()).pow(2).mean(dim=[1, 2, 3])


def sft(pred, target):
    lw, _ = per_sample(pred, target).chunk(2)
    return {"loss": lw.mean(), "chosen_loss": lw.mean()}


def dpo(pred, target, ref, beta):
    lw, ll = per_sample(pred, target).chunk(2)
    rw, rl = per_sample(ref, target).chunk(2)
    inside = -0.5 * beta * ((lw - ll) - (rw - rl))
    acc = ((inside > 0).double() + 0.5 * (inside == 0).double()).mean()
    return {"loss": -F.logsigmoid(inside).mean(), "implicit_acc": acc, "chosen_loss": lw.mean(),
            "rejected_loss": ll.mean(), "ref_chosen_loss": rw.mean(), "ref_rejected_loss": rl.mean()}


def mapo(pred, target, beta, snr, T):
    lw, ll = per_sample(pred, target).chunk(2)

    def f(x):
        # x / (exp(x) - 1), with its limit 1 at 0 (the official code divides 0 by 0 there).
        return torch.where(x == 0, torch.ones_like(x), x / torch.expm1(x))

    margin = T * (f(snr * lw) - f(snr * ll))
    loss = lw.mean() - beta * F.logsigmoid(margin).mean()
    return {"loss": loss, "chosen_loss": lw.mean(), "rejected_loss": ll.mean(), "margin": margin.mean()}


def loss_cases():
    out = {}
    b, shape = 4, (4, 8, 8)

    def pair_preds(level, gap):
        target = torch.randn(2 * b, *shape)
        e = torch.randn(b, *shape) * level ** 0.5
        scale = 1 + gap * torch.randn(b, 1, 1, 1)
        pred = target + torch.cat([e, e * scale])
        return pred, target

    cases = {
        "realistic": pair_preds(0.1, 5e-3),
        "tiny_errors": pair_preds(1e-7, 0.5),
        "large_gaps": pair_preds(1.0, 0.5),
    }
    pred, target = pair_preds(0.1, 5e-3)
    pred[0] = target[0]  # L_w = 0 exactly for pair 0
    pred[b + 1] = target[b + 1]  # L_l = 0 exactly for pair 1
    cases["zero_errors"] = (pred, target)
    refs = {name: target + (pred - target) * (1 + 0.01 * torch.randn(2 * b, 1, 1, 1))
            for name, (pred, target) in cases.items()}
    # Far from the reference: the reference's errors are unrelated to the policy's (own
    # generator, so the cases above keep their bytes).
    g = torch.Generator().manual_seed(17)
    target = torch.randn(2 * b, *shape, generator=g)
    pred = target + torch.randn(2 * b, *shape, generator=g) * 0.3
    cases["far_from_reference"] = (pred, target)
    refs["far_from_reference"] = target + torch.randn(2 * b, *shape, generator=g) * torch.rand(2 * b, 1, 1, 1, generator=g)
    for name, (pred, target) in cases.items():
        ref = refs[name]
        out[f"{name}.model_pred"], out[f"{name}.target"], out[f"{name}.ref_pred"] = pred, target, ref
        results = {
            "sft": sft(pred, target),
            "dpo": dpo(pred, target, ref, 5000.0),
            "mapo": mapo(pred, target, 0.1, 0.5, 1000.0),
            "mapo_b1_s2": mapo(pred, target, 1.0, 2.0, 1000.0),
        }
        for method, vals in results.items():
            for k, v in vals.items():
                out[f"{name}.{method}.{k}"] = v.reshape(1)
        out[f"{name}.errors"] = per_sample(pred, target)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "losses.safetensors"))


# ---- training steps on the tiny UNet ----
KEEP = [
    "conv_in.weight",
    "time_embedding.linear_1.bias",
    "add_embedding.linear_1.weight",
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    "down_blocks.2.attentions.0.transformer_blocks.1.ff.net.0.proj.bias",
    "mid_block.resnets.0.norm1.weight",
    "up_blocks.0.attentions.1.proj_out.weight",
    "up_blocks.2.resnets.2.conv2.bias",
    "conv_out.weight",
]


def train_case(name, method, optim, lr, steps, max_norm=1.0, wd=1e-2, params=None):
    root = os.path.join(OUT, "tiny-sdxl", "unet")
    unet = UNet2DConditionModel.from_pretrained(root, torch_dtype=torch.float32)
    unet.train()
    ref = None
    if method == "dpo":
        ref = UNet2DConditionModel.from_pretrained(root, torch_dtype=torch.float32).eval().requires_grad_(False)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    b = 2
    chosen = torch.randn(b, 4, 8, 8, generator=g)
    rejected = torch.randn(b, 4, 8, 8, generator=g)
    noise = torch.randn(b, 4, 8, 8, generator=g)
    timestep = torch.tensor([200, 700])
    ehs = torch.randn(b, 77, 48, generator=g)
    text_embeds = torch.randn(b, 32, generator=g)
    time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], [768.0, 1360.0, 32.0, 64.0, 1024.0, 1024.0]])
    if optim == "adamw":
        opt = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    elif optim == "adafactor":
        from transformers.optimization import Adafactor

        # Diffusion-DPO's SDXL settings: fixed lr, no parameter scaling, no first moment.
        opt = Adafactor(unet.parameters(), lr=lr, weight_decay=wd, clip_threshold=1.0,
                        scale_parameter=False, relative_step=False, warmup_init=False)
    else:
        opt = torch.optim.SGD(unet.parameters(), lr=lr)
    before = {k: v.detach().clone() for k, v in unet.named_parameters() if k in KEEP}
    losses, norms = [], []
    for _ in range(steps):
        x_w = sched.add_noise(chosen, noise, timestep)
        x_l = sched.add_noise(rejected, noise, timestep)
        if method == "sft":
            x, t, c, te, ti, target = x_w, timestep, ehs, text_embeds, time_ids, noise
        else:
            x = torch.cat([x_w, x_l])
            t = torch.cat([timestep, timestep])
            c, te, ti = torch.cat([ehs, ehs]), torch.cat([text_embeds] * 2), torch.cat([time_ids] * 2)
            target = torch.cat([noise, noise])
        cond = {"text_embeds": te, "time_ids": ti}
        pred = unet(x, t, c, added_cond_kwargs=cond).sample
        losses_ps = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
        if method == "sft":
            loss = losses_ps.mean()
        elif method == "mapo":
            lw, ll = losses_ps.chunk(2)
            s, T, beta = 0.5, 1000, 0.1
            log_odds = (s * lw) / (torch.exp(s * lw) - 1) - (s * ll) / (torch.exp(s * ll) - 1)
            loss = lw.mean() - (beta * F.logsigmoid(log_odds * T)).mean()
        else:
            with torch.no_grad():
                rp = ref(x, t, c, added_cond_kwargs=cond).sample
            rps = F.mse_loss(rp.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
            lw, ll = losses_ps.chunk(2)
            rw, rl = rps.chunk(2)
            inside = -0.5 * 5000.0 * ((lw - ll) - (rw - rl))
            loss = -F.logsigmoid(inside).mean()
        opt.zero_grad()
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(unet.parameters(), max_norm if max_norm > 0 else float("inf")))
        opt.step()
        losses.append(loss.detach())
    after = {k: v.detach().clone() for k, v in unet.named_parameters() if k in KEEP}
    out = {"chosen": chosen, "rejected": rejected, "noise": noise, "timestep": timestep,
           "encoder_hidden_states": ehs, "text_embeds": text_embeds, "time_ids": time_ids,
           "expected.loss": torch.stack(losses), "expected.grad_norm": torch.stack(norms)}
    for k in KEEP:
        out[f"expected.before.{k}"] = before[k]
        out[f"expected.after.{k}"] = after[k]
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, f"train_{name}.safetensors"))
    print(name, [l.item() for l in losses], [n.item() for n in norms])


loss_cases()
if "--losses-only" in sys.argv:
    sys.exit(0)
train_case("mapo_adamw", "mapo", "adamw", 1e-3, 2)
train_case("dpo_sgd", "dpo", "sgd", 1e-2, 1)
train_case("sft_adamw", "sft", "adamw", 1e-3, 1)
train_case("dpo_adafactor", "dpo", "adafactor", 1e-3, 2)
