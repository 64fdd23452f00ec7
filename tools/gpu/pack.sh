#!/usr/bin/env bash
# Prepares .gpu/ (ignored by git, carried to the GPU machine): the xz'd CUDA build of mapo
# and the pure-Python wheels the PyTorch baseline needs there (it has torch but no
# diffusers). Then, on the device: `bash tools/gpu/run-all.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
mkdir -p .gpu
bash scripts/build-cuda.sh
cp "${CARGO_TARGET_DIR:-$HOME/.cache/mapo-target}-cuda/release/mapo-cuda.xz" .gpu/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpu "diffusers==0.42.1"
du -sh .gpu
