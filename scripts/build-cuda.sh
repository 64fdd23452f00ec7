#!/usr/bin/env bash
# Builds mapo with the CUDA backend (plus wgpu and flex) on a machine without internet
# access to GitHub: Burn's `cuda` feature pulls tracel-llvm-bundler, whose build script
# would download an LLVM bundle; provide-llvm-bundle.sh lays it out from PyPI wheels first.
# Output: $CARGO_TARGET_DIR/release/mapo, and mapo-cuda.xz beside it for carrying.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mapo-target}"
bash scripts/provide-llvm-bundle.sh
# A separate target dir keeps the CUDA build from invalidating the default one.
export CARGO_TARGET_DIR="$CARGO_TARGET_DIR-cuda"
cargo build --release --features "cuda wgpu" "$@"
xz -6 -T0 -k -f "$CARGO_TARGET_DIR/release/mapo" -c > "$CARGO_TARGET_DIR/release/mapo-cuda.xz"
ls -la "$CARGO_TARGET_DIR/release/mapo" "$CARGO_TARGET_DIR/release/mapo-cuda.xz"
