#!/usr/bin/env bash
# SDXL single files at the real size (benches/RESULTS.md, "Single-file checkpoints"): a
# random-weight SDXL folder at the real configs (f16, from tests/fixtures/sdxl_*_keys.json),
# written as one single file and read back, with each conversion's peak RSS and time. Both
# stream one tensor at a time: the peak should be about the largest tensor, not the model.
# Usage: bash benches/scale/single-file.sh [WORK_DIR]   (needs ~21 GB of disk in WORK_DIR and
# ~15 GB of memory)
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${MAPO:-${CARGO_TARGET_DIR:-$HOME/.cache/mapo-target}/release/mapo}
W=${1:-/tmp/mapo-single-file-bench}
rm -rf "$W" && mkdir -p "$W/sdxl"
export MAPO_QUIET_DEVICE=1
for c in unet vae text_encoder text_encoder_2; do
  mkdir -p "$W/cfg/$c"
  python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['config']))" \
    "tests/fixtures/sdxl_${c}_keys.json" > "$W/cfg/$c/config.json"
  "$B" dev random-model "$c" --config "$W/cfg/$c/config.json" --out "$W/sdxl/$c" --dtype f16 >/dev/null
done
cp -r tests/fixtures/tiny-sdxl/{tokenizer,tokenizer_2,scheduler,model_index.json} "$W/sdxl/"
measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -v "$@" 2>"$W/time.txt" >/dev/null
  local rss wall
  rss=$(grep "Maximum resident" "$W/time.txt" | awk '{print $6}')
  wall=$(grep "Elapsed (wall" "$W/time.txt" | awk '{print $8}')
  printf '%-34s peak RSS %7.2f GB   wall %s\n' "$label" "$(echo "$rss / 1048576" | bc -l)" "$wall"
}
echo "model: $(du -sh "$W/sdxl" | cut -f1) of f16 weights"
measure "folder -> single file (f16)" "$B" dev convert --to single-file --model "$W/sdxl" --out "$W/sdxl.safetensors" --dtype f16
echo "single file: $(du -h "$W/sdxl.safetensors" | cut -f1)"
measure "single file -> folder" "$B" dev convert --to diffusers --model "$W/sdxl.safetensors" --config "$W/sdxl" --out "$W/back"
# --model FILE: recognised as SDXL base by its shapes (built-in configs and vocabulary), read
# in place; every component loads in f32 and one 64² step runs.
measure "generate --model FILE (f32, 64²)" "$B" generate --model "$W/sdxl.safetensors" --prompt "a cat" --steps 1 \
  --width 64 --height 64 --device flex --out "$W/x.png"
rm -rf "$W"
