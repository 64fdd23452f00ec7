#!/usr/bin/env bash
# The LLVM bundle for the cuda/cpu features, offline (docs/design.md §6).
# Provide the LLVM bundle that tracel-llvm-bundler 23.1.0-4 (build-dep of
# cubecl-llvm 0.11.x, pulled in by burn's `cuda` feature) would otherwise
# download from GitHub, using static LLVM 23.1.1 from PyPI instead.
#
# tracel-llvm-bundler's build.rs returns early (no network) when
#   $DATA_LOCAL_DIR/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed
# exists, where DATA_LOCAL_DIR = $XDG_DATA_HOME (if set & absolute) else ~/.local/share
# (dirs::data_local_dir()). Its link() then runs <that dir>/bin/llvm-config
# --link-static {--libdir,--includedir,--libs,--system-libs,--cxxflags}.
#
# Source: PyPI wheels (via pip only)
#   mlc-llvm-static==23.1.1.post0                 (headers, X86 + all generic libs, zlib/zstd .a, llvm-config)
#   mlc-llvm-static-extra-targets==23.1.1.post0   (NVPTX, AMDGPU, ... target libs + "all"-profile headers)
# The wheels' bin/llvm-config is a Python 3 script (needs python3 on PATH at
# cargo build time); it locates its prefix as <dir of bin>/.. so the tree can
# be copied anywhere.
set -euo pipefail

MLC_VERSION="23.1.1.post0"
BUNDLE_NAME="tracel-llvm-23.1.0-4"          # = tracel-llvm-<TRACEL_LLVM_VERSION>-<RELEASE_NUMBER>
SENTINEL=".tracel-llvm-installed"

if [[ -n "${XDG_DATA_HOME:-}" && "${XDG_DATA_HOME}" = /* ]]; then
  DATA_DIR="$XDG_DATA_HOME"
else
  DATA_DIR="$HOME/.local/share"
fi
DEST="${TRACEL_LLVM_DEST:-$DATA_DIR/tracel/$BUNDLE_NAME}"

if [[ -f "$DEST/$SENTINEL" && -x "$DEST/bin/llvm-config" ]]; then
  echo "LLVM bundle already present at $DEST"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { echo "python3 is required" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Pinned wheels (hashes of the manylinux_2_28_x86_64 wheels on PyPI).
cat > "$WORK/req.txt" <<EOF
mlc-llvm-static==${MLC_VERSION} --hash=sha256:dcfec888abfaa418be77d41af585805f31463584cf9c90582992c00f392c1ac5
mlc-llvm-static-extra-targets==${MLC_VERSION} --hash=sha256:c36e834d9a4e9cf9759f27fece65711ece7a2fc2b5a96dbb15d66f5e9e787929
EOF
"$PYTHON" -m pip download --no-deps --only-binary=:all: --require-hashes \
  -r "$WORK/req.txt" -d "$WORK/wheels"

mkdir -p "$WORK/x"
for whl in "$WORK"/wheels/mlc_llvm_static-*.whl "$WORK"/wheels/mlc_llvm_static_extra_targets-*.whl; do
  "$PYTHON" -m zipfile -e "$whl" "$WORK/x"
done

SRC="$WORK/x/mlc_llvm_static/static"
test -f "$SRC/lib/libLLVMNVPTXCodeGen.a" || { echo "NVPTX libs missing from wheels" >&2; exit 1; }

rm -rf "$DEST"
mkdir -p "$DEST"
cp -a "$SRC/." "$DEST/"
chmod +x "$DEST/bin/llvm-config" "$DEST/bin/llvm-config.py"
# keep the license texts next to the libraries
cp -a "$WORK/x/mlc_llvm_static/licenses" "$DEST/licenses"

# Sanity checks: the exact queries tracel-llvm-bundler / cubecl-llvm make.
CFG="$DEST/bin/llvm-config"
echo "llvm-config --version:      $("$CFG" --link-static --version)"
echo "llvm-config --libdir:       $("$CFG" --link-static --libdir)"
echo "llvm-config --includedir:   $("$CFG" --link-static --includedir)"
echo "llvm-config --system-libs:  $("$CFG" --link-static --system-libs)"
echo "llvm-config --cxxflags:     $("$CFG" --link-static --cxxflags)"
echo "llvm-config --targets-built: $("$CFG" --targets-built)"
"$CFG" --link-static --libs | tr ' ' '\n' | grep -qx -- -lLLVMNVPTXCodeGen \
  || { echo "llvm-config --libs does not list NVPTX" >&2; exit 1; }

# Marker that makes tracel-llvm-bundler's build.rs skip the GitHub download.
touch "$DEST/$SENTINEL"
echo "Installed LLVM ${MLC_VERSION} bundle to $DEST ($(du -sh "$DEST" | cut -f1))"
