"""One table from run-all.sh's results.jsonl (and the parity logs):

  python3 tools/gpu/summary.py OUT/results.jsonl OUT/parity-*.txt

Peaks: device memory reserved by the allocator where the backend reports it (CUDA: Burn's
pool, PyTorch's max_memory_reserved), else the process's peak RSS.
"""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by = {r["label"]: r for r in rows}


def res(label):
    return by.get(label, {}).get("result")


def status(label):
    r = by.get(label)
    if r is None:
        return "not run"
    if "skipped" in r:
        return "skipped"
    if "failed" in r:
        return f"failed ({r['failed']})"
    return None


def gb(r):
    b = r.get("peak_device_bytes") or r.get("peak_rss_bytes")
    return f"{b / 1e9:.2f}" if b else "—"


def cell_time(label, key="median_s"):
    r = res(label)
    return f"{r[key]:.3f}" if r else status(label)


out = ["## Parity", ""]
for path in sys.argv[2:]:
    lines = [line.strip() for line in open(path) if line.strip()]
    out.append(f"- {path.rsplit('/', 1)[-1]}: {lines[-1] if lines else 'no output'}")

out += ["", "## Training step (median s/step, peak GB)", "",
        "| method | weights | mapo s | torch s | mapo / torch | mapo GB | torch GB |", "|---|---|---:|---:|---:|---:|---:|"]
for mode in ["lora", "full"]:
    for method in ["sft", "dpo", "mapo"]:
        m, t = res(f"train {method} {mode} mapo"), res(f"train {method} {mode} torch")
        ratio = f"{m['median_s'] / t['median_s']:.2f}" if m and t else "—"
        out.append(f"| {method} | {mode} | {cell_time(f'train {method} {mode} mapo')} | "
                   f"{cell_time(f'train {method} {mode} torch')} | {ratio} | {gb(m) if m else '—'} | {gb(t) if t else '—'} |")
for label, name in [("train mapo lora mapo", "efficient"), ("train mapo lora mapo-naive-attention", "naive"),
                    ("train mapo lora mapo-block-2^27", "efficient, 2^27-element blocks")]:
    r = res(label)
    out.append(f"- mapo LoRA MaPO step, {name} attention: "
               + (f"{r['median_s']:.3f} s, {gb(r)} GB" if r else status(label)))

shares = [r["finite_check_share"] for r in (res(f"train {m} {w} mapo") for m in ["sft", "dpo", "mapo"]
                                             for w in ["lora", "full"]) if r and "finite_check_share" in r]
if shares:
    out.append(f"- finite check of the updated weights: {100 * min(shares):.2f}–{100 * max(shares):.2f}% of a step")

r = res("all-reduce world-size-1")
out.append("- Burn all-reduce at world size 1: " + (
    f"max |Δw| {r['max_abs_diff']:.2e} vs no reduction, all-reduce used: {r['all_reduce_used']}" if r
    else status("all-reduce world-size-1")))

out += ["", "## SD3.5 Medium training step (mapo only)", "",
        "| method | weights | mapo s | mapo GB |", "|---|---|---:|---:|"]
for mode in ["lora", "full"]:
    for method in ["sft", "dpo", "mapo"]:
        label = f"train-sd3 {method} {mode} mapo"
        m = res(label)
        out.append(f"| {method} | {mode} | {cell_time(label)} | {gb(m) if m else '—'} |")

out += ["", "## FLUX.1 [dev] LoRA training step", "",
        "| method | mapo s | torch s | mapo / torch | mapo GB | torch GB |", "|---|---:|---:|---:|---:|---:|"]
for name, label, baseline in [("mapo", "mapo", "mapo"), ("dpo", "dpo", "dpo"),
                              ("dpo, cached reference", "dpo-cached-ref", "dpo"), ("sft", "sft", "sft")]:
    mine, theirs = f"train-flux {label} lora mapo", f"train-flux {baseline} lora torch"
    m, t = res(mine), res(theirs)
    ratio = f"{m['median_s'] / t['median_s']:.2f}" if m and t else "—"
    out.append(f"| {name} | {cell_time(mine)} | {cell_time(theirs)} | {ratio} | "
               f"{gb(m) if m else '—'} | {gb(t) if t else '—'} |")

out += ["", "## One online iteration, SD3.5 Medium LoRA 32 (mapo)", "",
        "| method | samples | sampling s | training s | updates | peak GB |", "|---|---:|---:|---:|---:|---:|"]
for method in ["grpo", "nft"]:
    label = f"online {method} sd3 mapo"
    r = res(label)
    if r:
        out.append(f"| {method} | {r['prompts'] * r['group']} | {r['sample_s']:.2f} | {r['train_s']:.2f} | "
                   f"{r['updates']} | {gb(r)} |")
    else:
        out.append(f"| {method} | — | {status(label)} | — | — | — |")

out += ["", "## Generation (whole run, s)", ""]
for impl in ["mapo", "torch"]:
    r = res(f"generate {impl}")
    out.append(f"- {impl}: " + (f"{r['total_s']:.2f} s ({r['step_median_s']:.3f} s/step), {gb(r)} GB" if r
                                  else status(f"generate {impl}")))

out += ["", "## Max batch (LoRA)", ""]
for method in ["mapo", "dpo"]:
    r = res(f"max-batch {method} lora mapo")
    out.append(f"- {method}: " + (f"{r['max_batch']} (tried ≤ {r['max_tried']})" if r
                                  else status(f"max-batch {method} lora mapo")))
print("\n".join(out))
