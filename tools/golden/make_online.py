"""Float64 references for the online methods' pieces (docs/design.md §4c), computed from the
formulas as written there (re-read from flow_grpo, DiffusionNFT and ddpo-pytorch), on f32
inputs: tests/fixtures/online_cases.safetensors (+ online_cases.json, the parameters).

  sde.{case}.*   inputs `latents`, `model_output`, `noise` [B,4,6,5], `sigma`, `sigma_next` [B]
                 (and `prev_sample` for the scoring case); outputs `expected.prev_sample`,
                 `expected.mean`, `expected.std` (= s·√(−dt)), `expected.log_prob`.
                 cases: `step` (a = 0.7; row 0 at σ = 1, where s divides by 1 − σ_next),
                 `score` (a = 0.7, prev_sample given: its log-prob), `small` (a = 0.3, σ near 0),
                 `ode` (a = 0: the Euler step, std 0, log_prob reported as 0).
  adv.{case}.*   `rewards` [B] f32, `group` [B] i64 → `expected.advantages`: (r − group mean) /
                 (population std of all rewards + 1e-4), clipped to ±5. cases: `groups` (3 groups
                 of 4), `clip` (one outlier whose advantage clips at adv_clip_max = 1: with the
                 iteration's std in the denominator |A| reaches ±5 only in large batches), `ties` (a group whose rewards
                 all tie: advantage 0).
  grpo.{case}.*  `log_prob`, `old_log_prob`, `advantages`, `s` [B], `mean`, `ref_mean` [B,4,6,5] →
                 `expected.loss`, `expected.policy_loss`, `expected.kl`. ρ = exp(lp − old),
                 policy = mean_b max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), kl = mean_b
                 mean_CHW((μ − μ_ref)²)/(2 s²), loss = policy + kl_beta·kl. cases: `kl`
                 (ε 1e-4, kl_beta 0.04: most ratios clipped), `wide` (ε 0.2, kl_beta 0.01),
                 `nokl` (kl_beta 0: no means needed; kl 0).
  nft.{case}.*   `model_pred`, `old_pred`, `ref_pred`, `x0`, `noisy` [B,4,6,5], `sigma`, `reward`
                 [B] → `expected.loss`. v⁺ = β v + (1 − β) v_old, v⁻ = (1 + β) v_old − β v,
                 x̂₀ = x_σ − σ v^±, L^± = mean((x̂₀ − x₀)²)/max(mean|x̂₀ − x₀|, 1e-5),
                 loss = 5 mean_b((r L⁺ + (1 − r) L⁻)/β) + ref_beta mean_b mean((v − v_ref)²).
                 cases: `default` (β 1, ref_beta 1e-4), `half` (β 0.5, ref_beta 0.01).

  ddpo.*         DDPO's DDIM step (η = 1, 50 steps of SDXL's scaled-linear schedule, 1000 steps):
                 `sample`, `eps`, `noise` [B,4,6,5], `timestep` [B] (i64; 981, 501, 1 — the last
                 step's prev clamps to 0) → `expected.prev_sample`, `expected.mean`,
                 `expected.std`, `expected.log_prob`; prev = t − 1000/50 clamped to [0, 999],
                 x̂₀ = (x − √(1−ᾱ_t) ε̂)/√ᾱ_t, s = η √((1−ᾱ_prev)/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_prev),
                 μ = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − s²) ε̂, log N(x'; μ, s²) averaged over (C,h,w).

Run from the repo root: python3 tools/golden/make_online.py
"""
import json
import math

import torch
from safetensors.torch import save_file

g = torch.Generator().manual_seed(28)
SHAPE = (3, 4, 6, 5)
out, params = {}, {}


def f32(*shape, scale=1.0):
    return (torch.randn(*shape, generator=g) * scale).float()


def d(t):
    return t.double()


# ---- SDE step ----
def sde(name, sigma, sigma_next, a, score=False):
    b = len(sigma)
    x, v, xi = f32(b, *SHAPE[1:]), f32(b, *SHAPE[1:]), f32(b, *SHAPE[1:])
    s32, n32 = torch.tensor(sigma, dtype=torch.float32), torch.tensor(sigma_next, dtype=torch.float32)
    s_, n_ = d(s32), d(n32)
    dt = n_ - s_
    denom = 1 - torch.where(s_ == 1, n_, s_)
    sc = a * torch.sqrt(s_ / denom)
    sc4, dt4, s4 = sc.view(-1, 1, 1, 1), dt.view(-1, 1, 1, 1), s_.view(-1, 1, 1, 1)
    mean = d(x) * (1 + sc4 ** 2 * dt4 / (2 * s4)) + d(v) * (1 + sc4 ** 2 * (1 - s4) / (2 * s4)) * dt4
    std = sc * torch.sqrt(-dt)
    p = f"sde.{name}."
    if score:
        prev32 = f32(b, *SHAPE[1:])
        out[p + "prev_sample"] = prev32
        prev = d(prev32)
    else:
        prev = mean + std.view(-1, 1, 1, 1) * d(xi)
    if a == 0:
        lp = torch.zeros(b, dtype=torch.float64)
    else:
        std4 = std.view(-1, 1, 1, 1)
        lp = (-((prev - mean) ** 2) / (2 * std4 ** 2) - torch.log(std4) - math.log(math.sqrt(2 * math.pi)))
        lp = lp.mean(dim=(1, 2, 3))
    out.update({p + "latents": x, p + "model_output": v, p + "noise": xi, p + "sigma": s32, p + "sigma_next": n32,
                p + "expected.prev_sample": prev.float(), p + "expected.mean": mean.float(),
                p + "expected.std": std.float(), p + "expected.log_prob": lp.float()})
    params[p[:-1]] = {"noise_level": a}


sde("step", [1.0, 0.75, 0.4], [0.9, 0.6, 0.2], 0.7)
sde("score", [0.8, 0.5, 0.3], [0.7, 0.4, 0.1], 0.7, score=True)
sde("small", [0.05, 0.02, 0.5], [0.02, 0.0, 0.25], 0.3)
sde("ode", [1.0, 0.6, 0.3], [0.8, 0.3, 0.0], 0.0)


# ---- advantages ----
def adv(name, rewards, group, clip=5.0):
    r32 = torch.tensor(rewards, dtype=torch.float32)
    r = d(r32)
    grp = torch.tensor(group, dtype=torch.int64)
    std = r.std(unbiased=False) + 1e-4
    a = torch.empty_like(r)
    for k in grp.unique():
        m = grp == k
        a[m] = (r[m] - r[m].mean()) / std
    a = a.clamp(-clip, clip)
    p = f"adv.{name}."
    out.update({p + "rewards": r32, p + "group": grp, p + "expected.advantages": a.float()})
    if clip != 5.0:
        params[p[:-1]] = {"adv_clip_max": clip}


adv("groups", (torch.randn(12, generator=g) * 0.3 + 0.5).tolist(), [0] * 4 + [1] * 4 + [2] * 4)
adv("clip", [0.01, 0.02, 0.015, 50.0, 0.0, 0.01, 0.02, 0.03], [0, 0, 0, 0, 1, 1, 1, 1], clip=1.0)
adv("ties", [0.7, 0.7, 0.7, 0.2, 0.9, 0.4], [5, 5, 5, 9, 9, 9])


# ---- GRPO ----
def grpo_case(name, eps, kl_beta, spread):
    b = 6
    old = f32(b, scale=0.5)
    lp = old + f32(b, scale=spread)
    a = f32(b)
    s = f32(b).abs().float() + 0.2
    mean, ref = f32(b, *SHAPE[1:]), f32(b, *SHAPE[1:])
    ratio = torch.exp(d(lp) - d(old))
    unclipped = -d(a) * ratio
    clipped = -d(a) * torch.clamp(ratio, 1 - eps, 1 + eps)
    policy = torch.maximum(unclipped, clipped).mean()
    kl = (((d(mean) - d(ref)) ** 2).mean(dim=(1, 2, 3)) / (2 * d(s) ** 2)).mean() if kl_beta > 0 else torch.zeros(
        (), dtype=torch.float64)
    p = f"grpo.{name}."
    out.update({p + "log_prob": lp, p + "old_log_prob": old, p + "advantages": a, p + "s": s, p + "mean": mean,
                p + "ref_mean": ref, p + "expected.loss": (policy + kl_beta * kl).float().reshape(1),
                p + "expected.policy_loss": policy.float().reshape(1), p + "expected.kl": kl.float().reshape(1)})
    params[p[:-1]] = {"clip_range": eps, "kl_beta": kl_beta}


grpo_case("kl", 1e-4, 0.04, 1e-4)
grpo_case("wide", 0.2, 0.01, 0.3)
grpo_case("nokl", 0.2, 0.0, 0.3)


# ---- DiffusionNFT ----
def nft_case(name, beta, ref_beta):
    b = 4
    v, v_old, v_ref = f32(b, *SHAPE[1:]), f32(b, *SHAPE[1:]), f32(b, *SHAPE[1:])
    x0, eps = f32(b, *SHAPE[1:]), f32(b, *SHAPE[1:])
    sigma = torch.tensor([0.9, 0.6, 0.35, 0.1], dtype=torch.float32)
    noisy = ((1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps).float()
    reward = torch.tensor([1.0, 0.0, 0.3, 0.85], dtype=torch.float32)
    s4 = d(sigma).view(-1, 1, 1, 1)
    vp = beta * d(v) + (1 - beta) * d(v_old)
    vn = (1 + beta) * d(v_old) - beta * d(v)

    def norm_err(vv):
        e = d(noisy) - s4 * vv - d(x0)
        return (e ** 2).mean(dim=(1, 2, 3)) / torch.clamp(e.abs().mean(dim=(1, 2, 3)), min=1e-5)

    r = d(reward)
    loss = 5 * ((r * norm_err(vp) + (1 - r) * norm_err(vn)) / beta).mean()
    loss = loss + ref_beta * ((d(v) - d(v_ref)) ** 2).mean(dim=(1, 2, 3)).mean()
    p = f"nft.{name}."
    out.update({p + "model_pred": v, p + "old_pred": v_old, p + "ref_pred": v_ref, p + "x0": x0, p + "noisy": noisy,
                p + "sigma": sigma, p + "reward": reward, p + "expected.loss": loss.float().reshape(1)})
    params[p[:-1]] = {"beta": beta, "ref_beta": ref_beta}


nft_case("default", 1.0, 1e-4)
nft_case("half", 0.5, 0.01)

# ---- DDPO (DDIM with η) ----
betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
ac = torch.cumprod(1 - betas, 0)
ts = torch.tensor([981, 501, 1], dtype=torch.int64)
x, e, xi = f32(3, *SHAPE[1:]), f32(3, *SHAPE[1:]), f32(3, *SHAPE[1:])
a_t = ac[ts].float().double()
a_p = ac[(ts - 20).clamp(0, 999)].float().double()
v4 = lambda t: t.view(-1, 1, 1, 1)
x0 = (d(x) - v4(torch.sqrt(1 - a_t)) * d(e)) / v4(torch.sqrt(a_t))
s_ = 1.0 * torch.sqrt((1 - a_p) / (1 - a_t)) * torch.sqrt(1 - a_t / a_p)
mean = v4(torch.sqrt(a_p)) * x0 + v4(torch.sqrt(1 - a_p - s_ ** 2)) * d(e)
prev = mean + v4(s_) * d(xi)
lp = (-((prev - mean) ** 2) / (2 * v4(s_) ** 2) - torch.log(v4(s_)) - math.log(math.sqrt(2 * math.pi))).mean(dim=(1, 2, 3))
out.update({"ddpo.sample": x, "ddpo.eps": e, "ddpo.noise": xi, "ddpo.timestep": ts,
            "ddpo.expected.prev_sample": prev.float(), "ddpo.expected.mean": mean.float(),
            "ddpo.expected.std": s_.float(), "ddpo.expected.log_prob": lp.float()})

save_file({k: v.contiguous() for k, v in out.items()}, "tests/fixtures/online_cases.safetensors")
with open("tests/fixtures/online_cases.json", "w") as f:
    json.dump(params, f, indent=1, sort_keys=True)
print(len(out), "tensors;", json.dumps(params))
