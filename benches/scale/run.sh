#!/usr/bin/env bash
# Memory at scale on the CPU (benches/RESULTS.md, "Streamed data, ranks, cached reference"):
#  1. peak RSS of MaPO runs (tiny config) on synthetic caches of 1k and 100k pairs;
#  2. peak RSS of DPO full fine-tuning with and without `reference_cache`, on a half-width
#     SDXL-structured UNet (benches/scale/mid_unet.json, random weights) where the
#     reference's weights are large enough to see.
# Usage: bash benches/scale/run.sh [WORK_DIR]   (needs ~2.5 GB of disk in WORK_DIR)
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${MAPO:-${CARGO_TARGET_DIR:-$HOME/.cache/mapo-target}/release/mapo}
W=${1:-/tmp/mapo-scale-bench}
rm -rf "$W" && mkdir -p "$W"
export MAPO_QUIET_DEVICE=1
peak() { python3 -c "import json,sys; l=[json.loads(x) for x in open(sys.argv[1])]; print(l[-1]['peak_rss_bytes']/2**20, sum(x['step_time_s'] for x in l)/len(l))" "$1/metrics.jsonl"; }
train() { # name data method extra-toml
  printf 'model = "%s"\ndata = "%s"\noutput_dir = "%s"\nmethod = "%s"\ndevice = "flex"\n%b\n' \
    "$MODEL" "$2" "$W/$1" "$3" "$4" > "$W/$1.toml"
  local t0=$(date +%s.%N)
  "$B" train --config "$W/$1.toml" 2>"$W/$1.log" >/dev/null
  local t1=$(date +%s.%N)
  read mb step < <(peak "$W/$1")
  printf '%-28s peak RSS %8.1f MB   mean step %.3f s   wall %.1f s\n' "$1" "$mb" "$step" "$(echo "$t1 - $t0" | bc)"
}

MODEL=tests/fixtures/tiny-sdxl
for n in 1000 100000; do
  t0=$(date +%s.%N)
  "$B" make-pairs --model $MODEL --pairs $n --cache --shard-size 256 --out "$W/cache-$n" >/dev/null
  echo "cache of $n pairs: $(du -sh "$W/cache-$n" | cut -f1), written in $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-6) s"
  train "mapo-$n-pairs" "$W/cache-$n" mapo 'steps = 50\nbatch_size = 4'
done

mkdir -p "$W/mid/unet"
"$B" random-model unet --config benches/scale/mid_unet.json --out "$W/mid/unet" --dtype f32 >/dev/null
"$B" params --model "$W/mid" 2>/dev/null | head -3 || true
"$B" make-pairs --model "$W/mid" --pairs 8 --size 32x32 --out "$W/mid-pairs.safetensors" >/dev/null
MODEL=$W/mid
train dpo-live "$W/mid-pairs.safetensors" dpo 'steps = 3\nbatch_size = 1'
train dpo-reference-cache "$W/mid-pairs.safetensors" dpo 'steps = 3\nbatch_size = 1\nreference_cache = true'
train mapo "$W/mid-pairs.safetensors" mapo 'steps = 3\nbatch_size = 1'
grep -h "reference_cache:" "$W"/dpo-reference-cache.log || true
