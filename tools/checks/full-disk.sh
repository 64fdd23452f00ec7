#!/usr/bin/env bash
# Every mapo command that writes, run with its output on a 3 MB tmpfs filled to leave
# FREE_KB (0, 64, 512: the first write, a later one or the last one meets the full disk).
# Each must succeed (its output fits) or exit 1 naming the path, never a panic or a
# signal, and a failed generate leaves the image it would replace intact. The files left
# are listed to be read. Needs root (mount).
# Usage: sudo bash tools/checks/full-disk.sh [path/to/mapo]
set -uo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-${CARGO_TARGET_DIR:-target}/release/mapo}"
fx=tests/fixtures
mnt=$(mktemp -d /tmp/mapo-full-XXXX)
work=$(mktemp -d /tmp/mapo-full-work-XXXX)
export MAPO_QUIET_DEVICE=1 RUST_BACKTRACE=0
"$bin" make-pairs --model $fx/tiny-sdxl --pairs 4 --out "$work/pairs.safetensors" >/dev/null 2>&1
"$bin" forward unet --model $fx/tiny-sdxl --inputs "$work/pairs.safetensors" --out /dev/null >/dev/null 2>&1
echo "a red square" > "$work/prompts.txt"
cat > "$work/train.toml" <<TOML
model = "$PWD/$fx/tiny-sdxl"
data = "$work/pairs.safetensors"
output_dir = "$mnt/run"
method = "mapo"
steps = 2
batch_size = 2
checkpoint_every = 1
device = "flex"
TOML
cat > "$work/exp.toml" <<TOML
name = "full"
runs_dir = "$mnt/runs"
methods = ["mapo"]
[model]
builtin = "toy"
[data]
generated = "style"
pairs_per_subject = 1
[pretrain]
steps = 2
batch_size = 4
[train]
steps = 2
batch_size = 2
[eval]
every = 1
seeds = 1
steps = 2
error_pairs = 4
TOML

fail=0
check() {
  local name=$1; shift
  mount -t tmpfs -o size=3m tmpfs "$mnt" || { echo "cannot mount a tmpfs (root needed)"; exit 2; }
  if [ "$name" = generate ]; then printf 'old image' > "$mnt/img.png"; fi
  dd if=/dev/zero of="$mnt/.filler" bs=4k count=$(( (3072 - FREE_KB) / 4 )) >/dev/null 2>&1
  "$@" >"$work/out.txt" 2>"$work/err.txt"
  local rc=$?
  local named=no; grep -q "$mnt" "$work/err.txt" && named=yes
  local left; left=$(cd "$mnt" && find . -type f ! -name .filler ! -size 0 | sort | tr '\n' ' ')
  if [ "$name" = generate ] && [ "$rc" != 0 ]; then
    if [ "$(head -c 9 "$mnt/img.png")" = "old image" ]; then left="${left/.\/img.png /}(old img.png intact) "; else fail=1; fi
  fi
  printf '%-14s exit %-3s path named: %-3s files left: %s\n' "$name" "$rc" "$named" "${left:-none}"
  printf '               %s\n' "$(grep -v '^mapo: device' "$work/err.txt" | tail -1 | cut -c1-150)"
  if [ "$rc" -ge 101 ] || { [ "$rc" != 0 ] && [ "$named" = no ]; }; then fail=1; fi
  umount "$mnt"
}
for FREE_KB in 0 64 512; do
echo "== $FREE_KB KB free =="
check make-pairs "$bin" make-pairs --model $fx/tiny-sdxl --pairs 4 --out "$mnt/pairs.safetensors"
check train "$bin" train --config "$work/train.toml"
check cache "$bin" cache --model $fx/tiny-sdxl --data $fx/parquet/pairs.parquet --resolution 32 --device flex --out "$mnt/cache"
check generate "$bin" generate --model $fx/tiny-sdxl --prompt "a red square" --steps 2 --device flex --out "$mnt/img.png"
check score "$bin" score --scorer clip --model $fx/tiny-clip --pairs $fx/tiny-clip/pairs.jsonl --device flex --out "$mnt/scores.jsonl"
check eval "$bin" eval --model $fx/tiny-sdxl --prompts "$work/prompts.txt" --scorer clip=$fx/tiny-clip --steps 2 --device flex --out "$mnt/eval"
check experiment "$bin" experiment "$work/exp.toml" --device flex
check lora-convert "$bin" lora convert --in $fx/lora/peft.safetensors --to kohya --out "$mnt/k.safetensors"
check convert "$bin" dev convert vae --model $fx/tiny-sdxl --out "$mnt/vae"
check random-model "$bin" dev random-model vae --config $fx/tiny-sdxl/vae/config.json --out "$mnt/vae"
done
rmdir "$mnt"; rm -rf "$work"
exit $fail
