#!/usr/bin/env bash
# Create the two peer environments, outside the repository:
#   $PEERS_HOME/stardist-venv  StarDist 2D 0.9 on TensorFlow (CPU build, Keras 2)
#   $PEERS_HOME/cellpose-venv  Cellpose 3.1 on the CPU build of torch
# PEERS_HOME defaults to ~/.cache/cellvit-peers; STARDIST_VENV / CELLPOSE_VENV override each.
# Re-running is cheap: an environment whose check import works is left as it is
# (pass --force to rebuild both).
set -euo pipefail

PEERS_HOME="${PEERS_HOME:-$HOME/.cache/cellvit-peers}"
STARDIST_VENV="${STARDIST_VENV:-$PEERS_HOME/stardist-venv}"
CELLPOSE_VENV="${CELLPOSE_VENV:-$PEERS_HOME/cellpose-venv}"
PYTHON="${PYTHON:-python3}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

# Versions known to work together on Python 3.11 (see docs/benchmarks.md, "Peers").
# tensorflow-cpu 2.15 is the last release with Keras 2 built in (stardist's best-tested
# path); it needs numpy < 2.
STARDIST_PKGS=("tensorflow-cpu==2.15.1" "numpy>=1.24,<2" "stardist==0.9.2" "csbdeep==0.8.2"
               "tifffile")
# torch first, pinned to the local CPU build: a plain torch requirement would pull CUDA.
TORCH_PKG="torch==2.13.0"
CELLPOSE_PKGS=("cellpose>=3.1,<4" "tifffile")

make_venv() {  # make_venv DIR CHECK_IMPORT INSTALL_CMDS...
    local dir="$1" check="$2"
    shift 2
    if [[ $FORCE -eq 0 && -x "$dir/bin/python" ]] && "$dir/bin/python" -c "$check" 2>/dev/null; then
        echo "ok: $dir (exists)"
        return
    fi
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip
    for cmd in "$@"; do
        # the local extra indexes lack most packages: drop pip's warning for each
        eval "\"$dir/bin/python\" -m pip install -q $cmd" 2> >(grep -v "is ignored: it is neither" >&2)
    done
    "$dir/bin/python" -c "$check"
    echo "built: $dir"
}

quote() { printf "'%s' " "$@"; }

make_venv "$STARDIST_VENV" \
    "import tensorflow, stardist, csbdeep, numpy, tifffile" \
    "$(quote "${STARDIST_PKGS[@]}")"
make_venv "$CELLPOSE_VENV" \
    "import torch, cellpose.train, cellpose.models, numpy, tifffile" \
    "$(quote "$TORCH_PKG")" "$(quote "${CELLPOSE_PKGS[@]}")"

TF_CPP_MIN_LOG_LEVEL=2 "$STARDIST_VENV/bin/python" - <<'PY'
import csbdeep, keras, numpy, stardist, tensorflow as tf
print(f"stardist-venv: tensorflow {tf.__version__}, keras {keras.__version__}, "
      f"stardist {stardist.__version__}, csbdeep {csbdeep.__version__}, numpy {numpy.__version__}")
PY
"$CELLPOSE_VENV/bin/python" - <<'PY'
import importlib.metadata as md, numpy, torch
print(f"cellpose-venv: cellpose {md.version('cellpose')}, torch {torch.__version__}, "
      f"numpy {numpy.__version__}")
PY
