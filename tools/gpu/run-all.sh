#!/usr/bin/env bash
# Everything a GPU machine measures, in one run (≤ 8 minutes on an H200), into one folder:
#   1. CUDA parity of `mapo forward` against the committed PyTorch fixtures, f32 and bf16;
#   2. training steps on the real SDXL UNet config (random weights), 1024², bf16, gradient
#      checkpointing: SFT / DPO / MaPO × LoRA / full, mapo and PyTorch + diffusers (SDPA)
#      side by side, plus mapo with `--attention naive` for the attention's before/after;
#   3. 30-step generation, mapo vs diffusers;
#   4. max batch of MaPO and DPO (LoRA), mapo, while time is left;
#   2d. SD3.5 Medium (real config, random weights) train steps, 1024², bf16, mapo only;
#   2e. FLUX.1 [dev] (real config, random weights) LoRA train steps, 1024², bf16: MaPO, Flow-DPO
#       with and without cached reference errors, SFT; mapo and PyTorch + diffusers;
#   2f. one GRPO and one NFT iteration of SD3.5 Medium (real config, random weights), 512²,
#       LoRA 32, bf16: sampling and training timed apart, peak memory.
# then prints one summary table (also $OUT/summary.md).
#
# On the GPU machine (no Rust, no diffusers): `bash tools/gpu/pack.sh` here first, which
# puts the xz'd CUDA binary and the diffusers wheel into .gpu/ (carry it), then there:
#   bash tools/gpu/run-all.sh
# Rehearsal on a CPU, every step the same but flex, the tiny config, 64² and small counts:
#   MAPO_GPU_REHEARSAL=1 bash tools/gpu/run-all.sh
#
# Env: OUT (result folder; default gpu-results/), MAPO_BIN (default: .gpu/mapo, unpacked
# from .gpu/mapo-cuda.xz), PYTHON (default python3), MAPO_GPU_BUDGET_S (default 450: the
# sections after the budget is spent are skipped and say so).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT="${OUT:-$ROOT/gpu-results}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
RESULTS="$OUT/results.jsonl"
: >"$LOG"
: >"$RESULTS"
PYTHON="${PYTHON:-python3}"
BUDGET="${MAPO_GPU_BUDGET_S:-450}"
T0=$(date +%s)
export PYTHONUNBUFFERED=1 MAPO_QUIET_DEVICE=1

if [ "${MAPO_GPU_REHEARSAL:-0}" = 1 ]; then
  DEV=flex TORCH_DEV=cpu MODEL=tiny RES=64 RES_MID=64 GEN_RES=64 GEN_STEPS=3 DTYPE=bf16 STEPS=1 WARMUP=1 MAXB=4 TMO=300
  SD3_MODEL=tiny-sd3 SD3_RES=64 FLUX_MODEL=tiny-flux FLUX_RES=64 ONLINE_RES=64 ONLINE_GROUP=2 ONLINE_STEPS=2
  BIN="${MAPO_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/mapo-target}/release/mapo}"
else
  DEV=cuda TORCH_DEV=cuda MODEL=sdxl RES=1024 RES_MID=512 GEN_RES=1024 GEN_STEPS=30 DTYPE=bf16 STEPS=3 WARMUP=1 MAXB=32 TMO=150
  SD3_MODEL=sd35m SD3_RES=1024 FLUX_MODEL=flux-dev FLUX_RES=1024 ONLINE_RES=512 ONLINE_GROUP=12 ONLINE_STEPS=10
  BIN="${MAPO_BIN:-$ROOT/.gpu/mapo}"
fi

say() { printf '%s\n' "$*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }
# Runs one measurement (a command printing one JSON line last); records it, or its failure.
measure() {
  local label=$1
  shift
  if [ "$(left)" -le 0 ]; then
    say "skip $label: budget of ${BUDGET}s spent"
    echo "{\"label\":\"$label\",\"skipped\":\"budget\"}" >>"$RESULTS"
    return
  fi
  local t=$(date +%s) line rc
  line=$(timeout "$TMO" "$@" 2>>"$LOG" | tail -n 1)
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 0 ] && [ "${line:0:1}" = "{" ]; then
    echo "{\"label\":\"$label\",\"result\":$line}" >>"$RESULTS"
    say "ok   $label ($(($(date +%s) - t)) s)"
  else
    echo "{\"label\":\"$label\",\"failed\":$rc}" >>"$RESULTS"
    say "FAIL $label (exit $rc after $(($(date +%s) - t)) s; see log.txt)"
  fi
}

say "== setup ($(date -u +%FT%TZ))"
if [ ! -x "$BIN" ] && [ -f "$ROOT/.gpu/mapo-cuda.xz" ]; then
  xz -dc "$ROOT/.gpu/mapo-cuda.xz" >"$ROOT/.gpu/mapo" && chmod +x "$ROOT/.gpu/mapo"
fi
[ -x "$BIN" ] || { say "no mapo binary at $BIN (run tools/gpu/pack.sh here and carry .gpu)"; exit 1; }
if ls "$ROOT"/.gpu/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mapo-site \
    "$ROOT"/.gpu/*.whl >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/mapo-site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; "$BIN" --version; "$PYTHON" -c \
  'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)'; } 2>&1 | tee -a "$LOG"

say "== 1. parity ($DEV)"
for dt in f32 bf16; do
  if timeout "$TMO" "$PYTHON" tools/gpu/check_backend.py "$BIN" "$DEV" "$dt" >"$OUT/parity-$dt.txt" 2>&1; then
    say "ok   parity $dt: $(tail -n 1 "$OUT/parity-$dt.txt")"
  else
    say "FAIL parity $dt: $(tail -n 1 "$OUT/parity-$dt.txt")"
  fi
done

say "== 2. train step ($MODEL, ${RES}², $DTYPE, gradient checkpointing)"
common=(--model "$MODEL" --resolution "$RES" --batch 1 --dtype "$DTYPE" --grad-ckpt --steps "$STEPS" --warmup "$WARMUP")
for mode in lora full; do
  extra=()
  [ "$mode" = lora ] && extra=(--lora 8)
  for method in mapo dpo sft; do
    measure "train $method $mode mapo" "$BIN" bench train-step --method "$method" "${common[@]}" "${extra[@]}" --device "$DEV"
    measure "train $method $mode torch" "$PYTHON" benches/torch/bench.py train-step --method "$method" \
      "${common[@]}" "${extra[@]}" --device "$TORCH_DEV"
  done
done
measure "train mapo lora mapo-naive-attention" "$BIN" bench train-step --method mapo "${common[@]}" --lora 8 \
  --attention naive --device "$DEV"
# Larger attention blocks (2²⁷ score elements): fewer, bigger kernels, more transient memory.
measure "train mapo lora mapo-block-2^27" "$BIN" bench train-step --method mapo "${common[@]}" --lora 8 \
  --attention-block 134217728 --device "$DEV"

say "== 2c. the real-size LoRA step of benches/RESULTS.md (LoRA 4, batch 1 pair, block checkpointing)"
# The CPU table's settings on the GPU, device memory beside PyTorch's (issue: the real job must fit).
for dt in f32 bf16; do
  for method in mapo dpo; do
    [ "$dt" = bf16 ] && [ "$method" = dpo ] && continue
    small=(--model "$MODEL" --resolution "$RES_MID" --batch 1 --lora 4 --grad-ckpt --dtype "$dt" --steps 1 --warmup 1)
    measure "train $method lora4 $RES_MID $dt mapo" "$BIN" bench train-step --method "$method" "${small[@]}" --device "$DEV"
    measure "train $method lora4 $RES_MID $dt torch" "$PYTHON" benches/torch/bench.py train-step --method "$method" \
      "${small[@]}" --device "$TORCH_DEV"
  done
done

say "== 2d. SD3.5 Medium train step ($SD3_MODEL, ${SD3_RES}², $DTYPE, gradient checkpointing, 77 + 256 text tokens)"
# The real SD3.5 Medium config (random weights), flow objective; mapo only: benches/torch/bench.py
# measures the SDXL UNet (an SD3 baseline is not written yet).
sd3=(--model "$SD3_MODEL" --resolution "$SD3_RES" --batch 1 --dtype "$DTYPE" --grad-ckpt --steps "$STEPS" --warmup "$WARMUP")
for mode in lora full; do
  extra=()
  [ "$mode" = lora ] && extra=(--lora 8)
  for method in mapo dpo sft; do
    measure "train-sd3 $method $mode mapo" "$BIN" bench train-step --method "$method" "${sd3[@]}" "${extra[@]}" --device "$DEV"
  done
done

say "== 2e. FLUX.1 [dev] LoRA train step ($FLUX_MODEL, ${FLUX_RES}², $DTYPE, gradient checkpointing, 512 T5 tokens)"
# The real FLUX.1 [dev] config (random weights, 11.9 B parameters: 23.8 GB in bf16), LoRA 8
# on the attention projections, embedded guidance 3.5, flow objective (MaPO T = 100); the same
# step in PyTorch + diffusers (benches/torch/bench.py's flow path). One timed step each.
flux=(--model "$FLUX_MODEL" --resolution "$FLUX_RES" --batch 1 --dtype "$DTYPE" --grad-ckpt --lora 8 --steps 1 --warmup 1)
for method in mapo dpo sft; do
  measure "train-flux $method lora mapo" "$BIN" bench train-step --method "$method" "${flux[@]}" --device "$DEV"
  [ "$method" = dpo ] && measure "train-flux dpo-cached-ref lora mapo" "$BIN" bench train-step --method dpo \
    --reference-cache "${flux[@]}" --device "$DEV"
  measure "train-flux $method lora torch" "$PYTHON" benches/torch/bench.py train-step --method "$method" "${flux[@]}" \
    --device "$TORCH_DEV"
done

say "== 2f. One online iteration on SD3.5 Medium ($SD3_MODEL, ${ONLINE_RES}², $DTYPE, LoRA 32, gradient checkpointing)"
# experiments/sd35m-pickscore-{grpo,nft}.toml's settings for one group: $ONLINE_GROUP samples of
# one prompt, $ONLINE_STEPS sampling steps (GRPO: SDE a = 0.7 with CFG 4.5; NFT: the ODE without
# guidance), trained on ⌊0.99·N⌋ of them, 4 samples per update. Random conditioning and a stand-in
# reward (no reward model on this machine): the sampler's and the trainer's time and memory.
online=(--model "$SD3_MODEL" --resolution "$ONLINE_RES" --prompts 1 --group "$ONLINE_GROUP" --batch 4
  --sampling-steps "$ONLINE_STEPS" --lora 32 --grad-ckpt --dtype "$DTYPE")
for method in grpo nft; do
  measure "online $method sd3 mapo" "$BIN" bench online --method "$method" "${online[@]}" --device "$DEV"
done

say "== 2b. Burn's all-reduce (NCCL) at world size 1: same weights as without it"
# Two 2-step MaPO runs of the tiny fixture on one device; the second averages its
# gradients through burn::tensor::distributed::all_reduce (MAPO_ALL_REDUCE=1; on CPUs,
# where Burn has no all-reduce, the variable changes nothing and the check is trivial).
all_reduce_check() {
  local d="$OUT/all-reduce" rank=$DEV
  [ "$DEV" = cuda ] && rank=cuda:0
  rm -rf "$d" && mkdir -p "$d"
  "$BIN" make-pairs --model tests/fixtures/tiny-sdxl --pairs 4 --out "$d/pairs.safetensors" >/dev/null || return 1
  for mode in plain all-reduce; do
    printf 'model = "%s"\ndata = "%s"\noutput_dir = "%s"\nmethod = "mapo"\nsteps = 2\nbatch_size = 2\ndevices = ["%s"]\n' \
      "$ROOT/tests/fixtures/tiny-sdxl" "$d/pairs.safetensors" "$d/$mode" "$rank" >"$d/$mode.toml"
    MAPO_ALL_REDUCE=$([ $mode = all-reduce ] && echo 1 || echo 0) "$BIN" train --config "$d/$mode.toml" \
      >/dev/null 2>"$d/$mode.log" || { cat "$d/$mode.log" >&2; return 1; }
  done
  grep -h "reduction" "$d/all-reduce.log" >&2
  "$PYTHON" - "$d" <<'EOF'
import json, sys
from safetensors.numpy import load_file
d = sys.argv[1]
f = "unet/diffusion_pytorch_model.safetensors"
a, b = load_file(f"{d}/plain/{f}"), load_file(f"{d}/all-reduce/{f}")
diff = max(float(abs(a[k] - b[k]).max()) for k in a)
nccl = "NCCL" in open(f"{d}/all-reduce.log").read()
print(json.dumps({"max_abs_diff": diff, "all_reduce_used": nccl}))
EOF
}
export -f all_reduce_check
export OUT DEV BIN ROOT PYTHON
measure "all-reduce world-size-1" bash -c all_reduce_check

say "== 3. generation (${GEN_RES}², $GEN_STEPS steps, $DTYPE)"
measure "generate mapo" "$BIN" bench generate --model "$MODEL" --resolution "$GEN_RES" --steps "$GEN_STEPS" \
  --dtype "$DTYPE" --device "$DEV"
measure "generate torch" "$PYTHON" benches/torch/bench.py generate --model "$MODEL" --resolution "$GEN_RES" \
  --steps "$GEN_STEPS" --dtype "$DTYPE" --device "$TORCH_DEV"

say "== 4. max batch (LoRA 8, ≤ $MAXB)"
for method in mapo dpo; do
  measure "max-batch $method lora mapo" "$BIN" bench max-batch --method "$method" --model "$MODEL" \
    --resolution "$RES" --dtype "$DTYPE" --grad-ckpt --lora 8 --max "$MAXB" --device "$DEV"
done

say "== summary ($(($(date +%s) - T0)) s in all)"
"$PYTHON" tools/gpu/summary.py "$RESULTS" "$OUT"/parity-*.txt | tee "$OUT/summary.md"
