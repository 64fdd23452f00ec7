"""PyTorch + diffusers baseline for `mapo bench`: the same work, the same JSON fields.

  python3 benches/torch/bench.py train-step --method mapo --model tiny --resolution 64 --batch 2 [--dtype bf16] [--grad-ckpt] [--lora 8]
  python3 benches/torch/bench.py generate --model tiny --resolution 64 --steps 30
  python3 benches/torch/bench.py train-step --method mapo --model flux-dev --resolution 1024 --dtype bf16 --grad-ckpt --lora 8

Flow families (`--model` tiny-sd3, sd35m, sd35l, tiny-flux, flux-dev, flux-schnell, or a transformer
config.json): the transformer as `mapo bench train-step` builds it (random weights, the same
configs), flow matching x = (1 − σ)·x₀ + σ·ε, target ε − x₀, σ fixed per row, text tokens
77 + 256 (SD3) or 512 (FLUX, embedded guidance 3.5, packed latents and ids as FluxPipeline
makes them); MaPO with the flow defaults mapo applies (T = 100), Flow-DPO β 5000 as mapo's
default, LoRA on the attention projections (to_q/k/v/out.0, add_*_proj, to_add_out).

Official formulas (Diffusion-DPO / MaPO repos), AdamW (.9/.999, eps 1e-8, wd 1e-2),
clip_grad_norm_(1.0), bf16 autocast for --dtype bf16, SDPA attention (diffusers' default),
gradient checkpointing with --grad-ckpt, DPO's reference a frozen copy run under no_grad
(with LoRA: the same UNet with its adapters disabled, as diffusers' DPO LoRA script does).
Configs: src/models/presets/{tiny,sdxl}_unet.json, the same files mapo embeds.
"""
import argparse
import copy
import json
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, EulerDiscreteScheduler, UNet2DConditionModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def unet_config(model):
    path = os.path.join(ROOT, "src/models/presets", f"{model}_unet.json")
    if not os.path.exists(path):
        path = os.path.join(model, "unet", "config.json")
    return json.load(open(path))


FLOW = {
    "tiny-sd3": "src/models/presets/tiny_sd3_transformer.json",
    "sd3m": "assets/sd3/sd3_medium_transformer.json",
    "sd35m": "assets/sd3/sd35_medium_transformer.json",
    "sd35l": "assets/sd3/sd35_large_transformer.json",
    "tiny-flux": "src/models/presets/tiny_flux_transformer.json",
    "flux-dev": "assets/flux/flux1_dev_transformer.json",
    "flux-schnell": "assets/flux/flux1_schnell_transformer.json",
}


def flow_config(model):
    path = FLOW.get(model)
    if path is not None:
        return json.load(open(os.path.join(ROOT, path)))
    if model.endswith(".json"):
        cfg = json.load(open(model))
        if cfg.get("_class_name") in ("SD3Transformer2DModel", "FluxTransformer2DModel"):
            return cfg
    return None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak(device):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dev = torch.cuda.max_memory_reserved() if device.type == "cuda" else None
    return dev, rss


def inputs(cfg, b, res, device):
    g = torch.Generator().manual_seed(0)
    h = res // 8
    time_dim = cfg.get("addition_time_embed_dim", 0) * 6
    text_dim = cfg["projection_class_embeddings_input_dim"] - time_dim
    r = lambda *s: torch.randn(*s, generator=g).to(device)
    time_ids = torch.tensor([[res, res, 0, 0, res, res]] * b, dtype=torch.float32, device=device)
    return r(b, 4, h, h), r(b, 4, h, h), r(b, 4, h, h), r(b, 77, cfg["cross_attention_dim"]), r(b, text_dim), time_ids


def train_step(a, device):
    cfg = unet_config(a.model)
    # Initialised on the device: a 2.6B-parameter init on the host takes longer than the bench.
    with torch.device(device):
        unet = UNet2DConditionModel(**{k: v for k, v in cfg.items() if not k.startswith("_")}).train()
    if a.grad_ckpt:
        unet.enable_gradient_checkpointing()
    params = unet.parameters()
    if a.lora:
        from peft import LoraConfig
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=a.lora, lora_alpha=a.lora, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        params = [p for p in unet.parameters() if p.requires_grad]
    params = list(params)
    # DPO's reference: a frozen copy for full fine-tuning; with LoRA the same UNet with its
    # adapters disabled, as diffusers' DPO LoRA script does (no second copy of the weights).
    ref = copy.deepcopy(unet).eval().requires_grad_(False) if a.method == "dpo" and not a.lora else None
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    chosen, rejected, noise, ehs, text, time_ids = inputs(cfg, a.batch, a.resolution, device)
    t = torch.tensor([(100 + 97 * i) % 1000 for i in range(a.batch)], device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16")
    times = []
    for i in range(a.warmup + a.steps):
        sync(device)
        t0 = time.perf_counter()
        x_w, x_l = sched.add_noise(chosen, noise, t), sched.add_noise(rejected, noise, t)
        if a.method == "sft":
            x, tt, c, te, ti, target = x_w, t, ehs, text, time_ids, noise
        else:
            x, tt = torch.cat([x_w, x_l]), torch.cat([t, t])
            c, te, ti, target = torch.cat([ehs] * 2), torch.cat([text] * 2), torch.cat([time_ids] * 2), torch.cat([noise] * 2)
        cond = {"text_embeds": te, "time_ids": ti}
        with autocast:
            pred = unet(x, tt, c, added_cond_kwargs=cond).sample
        losses = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
        if a.method == "sft":
            loss = losses.mean()
        elif a.method == "mapo":
            lw, ll = losses.chunk(2)
            s, T, beta = 0.5, 1000, 0.1
            log_odds = (s * lw) / (torch.exp(s * lw) - 1) - (s * ll) / (torch.exp(s * ll) - 1)
            loss = lw.mean() - (beta * F.logsigmoid(log_odds * T)).mean()
        else:
            with torch.no_grad(), autocast:
                if a.lora:
                    unet.disable_adapters()
                    rp = unet(x, tt, c, added_cond_kwargs=cond).sample
                    unet.enable_adapters()
                else:
                    rp = ref(x, tt, c, added_cond_kwargs=cond).sample
            rl = F.mse_loss(rp.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
            (lw, ll), (rw, rl2) = losses.chunk(2), rl.chunk(2)
            loss = -F.logsigmoid(-0.5 * 5000.0 * ((lw - ll) - (rw - rl2))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sync(device)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    dev, rss = peak(device)
    med = statistics.median(times)
    return {"bench": "train-step", "framework": "torch", "method": a.method, "model": a.model, "resolution": a.resolution,
            "batch": a.batch, "dtype": a.dtype, "lora": a.lora, "grad_ckpt": a.grad_ckpt, "device": device.type,
            "steps": a.steps, "median_s": med, "min_s": min(times), "max_s": max(times),
            "samples_per_s": a.batch / med, "peak_device_bytes": dev, "peak_rss_bytes": rss}


def flow_train_step(a, cfg, device):
    from diffusers import FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel
    flux = cfg["_class_name"] == "FluxTransformer2DModel"
    cls = FluxTransformer2DModel if flux else SD3Transformer2DModel
    with torch.device(device):
        net = cls(**{k: v for k, v in cfg.items() if not k.startswith("_")}).train()
    if a.grad_ckpt:
        net.enable_gradient_checkpointing()
    params = net.parameters()
    if a.lora:
        from peft import LoraConfig
        net.requires_grad_(False)
        targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
        net.add_adapter(LoraConfig(r=a.lora, lora_alpha=a.lora, target_modules=targets))
        params = [p for p in net.parameters() if p.requires_grad]
    params = list(params)
    ref = copy.deepcopy(net).eval().requires_grad_(False) if a.method == "dpo" and not a.lora else None
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    b, h = a.batch, a.resolution // 8
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device)
    c = cfg["in_channels"] // 4 if flux else cfg["in_channels"]
    tokens = 512 if flux else 77 + 256
    chosen, rejected, noise = r(b, c, h, h), r(b, c, h, h), r(b, c, h, h)
    ehs, pooled = r(b, tokens, cfg["joint_attention_dim"]), r(b, cfg["pooled_projection_dim"])
    sigma = torch.tensor([((100 + 97 * i) % 1000 + 0.5) / 1000 for i in range(b)], device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16")
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, h // 2, device, torch.float32) if flux else None
    txt_ids = torch.zeros(tokens, 3, device=device) if flux else None

    def call(model, x, s, ctx, pool):
        if flux:
            n = x.shape[0]
            packed = FluxPipeline._pack_latents(x, n, c, h, h)
            guidance = torch.full([n], 3.5, device=device) if cfg.get("guidance_embeds") else None
            out = model(hidden_states=packed, timestep=s, guidance=guidance, pooled_projections=pool,
                        encoder_hidden_states=ctx, txt_ids=txt_ids, img_ids=img_ids).sample
            return FluxPipeline._unpack_latents(out, h * 8, h * 8, 8)
        return model(hidden_states=x, timestep=s * 1000, encoder_hidden_states=ctx, pooled_projections=pool).sample

    times = []
    sv = sigma.view(-1, 1, 1, 1)
    for i in range(a.warmup + a.steps):
        sync(device)
        t0 = time.perf_counter()
        x_w, x_l = (1 - sv) * chosen + sv * noise, (1 - sv) * rejected + sv * noise
        if a.method == "sft":
            x, s, ctx, pool, target = x_w, sigma, ehs, pooled, noise - chosen
        else:
            x, s = torch.cat([x_w, x_l]), torch.cat([sigma, sigma])
            ctx, pool = torch.cat([ehs] * 2), torch.cat([pooled] * 2)
            target = torch.cat([noise - chosen, noise - rejected])
        with autocast:
            pred = call(net, x, s, ctx, pool)
        losses = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
        if a.method == "sft":
            loss = losses.mean()
        elif a.method == "mapo":
            lw, ll = losses.chunk(2)
            sn, T, beta = 0.5, 100, 0.1
            log_odds = (sn * lw) / (torch.exp(sn * lw) - 1) - (sn * ll) / (torch.exp(sn * ll) - 1)
            loss = lw.mean() - (beta * F.logsigmoid(log_odds * T)).mean()
        else:
            with torch.no_grad(), autocast:
                if a.lora:
                    net.disable_adapters()
                    rp = call(net, x, s, ctx, pool)
                    net.enable_adapters()
                else:
                    rp = call(ref, x, s, ctx, pool)
            rl = F.mse_loss(rp.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
            (lw, ll), (rw, rl2) = losses.chunk(2), rl.chunk(2)
            loss = -F.logsigmoid(-0.5 * 5000.0 * ((lw - ll) - (rw - rl2))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sync(device)
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    dev, rss = peak(device)
    med = statistics.median(times)
    return {"bench": "train-step", "framework": "torch", "method": a.method, "model": a.model, "resolution": a.resolution,
            "batch": a.batch, "dtype": a.dtype, "lora": a.lora, "grad_ckpt": a.grad_ckpt, "device": device.type,
            "steps": a.steps, "median_s": med, "min_s": min(times), "max_s": max(times),
            "samples_per_s": a.batch / med, "peak_device_bytes": dev, "peak_rss_bytes": rss}


def generate(a, device):
    cfg = unet_config(a.model)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    with torch.device(device):
        unet = UNet2DConditionModel(**{k: v for k, v in cfg.items() if not k.startswith("_")}).to(dtype).eval()
    _, _, noise, ehs, text, time_ids = inputs(cfg, 1, a.resolution, device)
    s = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                               timestep_spacing="leading")
    s.set_timesteps(a.steps)
    x = (noise * s.init_noise_sigma).to(dtype)
    context = torch.cat([torch.zeros_like(ehs), ehs]).to(dtype)
    cond = {"text_embeds": torch.cat([torch.zeros_like(text), text]).to(dtype), "time_ids": torch.cat([time_ids] * 2)}
    per_step = []
    sync(device)
    t_start = time.perf_counter()
    with torch.no_grad():
        for t in s.timesteps:
            t0 = time.perf_counter()
            eps = unet(s.scale_model_input(torch.cat([x] * 2), t), t, context, added_cond_kwargs=cond).sample
            u, c = eps.chunk(2)
            x = s.step(u + 5.0 * (c - u), t, x).prev_sample
            sync(device)
            per_step.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_start
    dev, rss = peak(device)
    return {"bench": "generate", "framework": "torch", "model": a.model, "resolution": a.resolution, "steps": a.steps,
            "dtype": a.dtype, "device": device.type, "total_s": total, "step_median_s": statistics.median(per_step),
            "step_min_s": min(per_step), "step_max_s": max(per_step), "peak_device_bytes": dev, "peak_rss_bytes": rss}


p = argparse.ArgumentParser()
p.add_argument("bench", choices=["train-step", "generate"])
p.add_argument("--method", default="mapo")
p.add_argument("--model", default="tiny")
p.add_argument("--resolution", type=int, default=64)
p.add_argument("--batch", type=int, default=1)
p.add_argument("--dtype", default="f32")
p.add_argument("--lora", type=int)
p.add_argument("--grad-ckpt", action="store_true")
p.add_argument("--steps", type=int, default=5)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
a = p.parse_args()
torch.manual_seed(0)
device = torch.device(a.device)
if a.bench == "train-step":
    flow = flow_config(a.model)
    print(json.dumps(flow_train_step(a, flow, device) if flow is not None else train_step(a, device)))
else:
    print(json.dumps(generate(a, device)))
