# The environment set-up shared by run_sample.sh, run_tests.sh and .ci/run; sourced, not run.
#
#   source scripts/setup_env.sh
#   cellvit_setup [EXTRAS]      # e.g. `cellvit_setup test`; sets VENV and PY
#
# Creates a venv (default: .venv at the repo root; VENV=... to put it elsewhere) with
# ${PYTHON:-python3} if it is missing or broken, installs torch first if the venv has none,
# then the package editable, with EXTRAS if given. A stamp file in the venv, keyed on
# pyproject.toml, the checkout's path, EXTRAS and the Python version, makes a second run skip
# pip altogether; delete the venv, or the stamp it names, to force a reinstall.
#
# torch: a torch already in the venv (say the build for your CUDA, installed by hand) is kept.
# Otherwise torch==$TORCH_VERSION (2.13.0) from the configured index, or from $TORCH_INDEX_URL
# when set. Where the plain pin resolves to a CUDA build (a Linux box on the public index) but
# there is no NVIDIA GPU, a note says how to get the CPU build instead.

cellvit_setup() {
    local extras="${1:-}" root key stamp torch_req
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    VENV="${VENV:-$root/.venv}"
    PY="$VENV/bin/python"

    if ! "$PY" -c '' 2>/dev/null; then
        echo "setup: creating $VENV"
        "${PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
            || { echo "setup: cellvit-cli needs Python >= 3.10 (set PYTHON=...)" >&2; return 1; }
        "${PYTHON:-python3}" -m venv --clear "$VENV"
    fi

    stamp="$VENV/.cellvit-setup${extras:+-$extras}"
    key="$("$PY" - "$root" "$extras" <<'EOF'
import hashlib, pathlib, sys
root, extras = sys.argv[1:]
h = hashlib.sha256("\0".join([root, extras, sys.version, ""]).encode())
h.update(pathlib.Path(root, "pyproject.toml").read_bytes())
print(h.hexdigest())
EOF
)"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && "$PY" -c 'import torch, cellvit_cli' 2>/dev/null; then
        echo "setup: reusing $VENV (up to date with pyproject.toml)"
        return 0
    fi

    local pip=("$PY" -m pip install --quiet --progress-bar off)
    if ! "$PY" -c 'import torch' 2>/dev/null; then
        torch_req="torch==${TORCH_VERSION:-2.13.0}"
        if [ -n "${TORCH_INDEX_URL:-}" ]; then
            echo "setup: installing $torch_req from $TORCH_INDEX_URL"
            "${pip[@]}" "$torch_req" --index-url "$TORCH_INDEX_URL"
        else
            if ! { command -v nvidia-smi && nvidia-smi -L; } >/dev/null 2>&1 \
                && _cellvit_pin_pulls_cuda "$torch_req"; then
                echo "setup: note: no NVIDIA GPU here, but $torch_req from this index is the CUDA" \
                     "build (several GB). For the CPU build, stop now (Ctrl-C) and rerun with" \
                     "TORCH_INDEX_URL set to PyTorch's CPU wheel index (see PyTorch's install page)."
            fi
            echo "setup: installing $torch_req"
            "${pip[@]}" "$torch_req"
        fi
    fi
    echo "setup: installing cellvit-cli${extras:+[$extras]} (editable) and its dependencies"
    "${pip[@]}" -e "$root${extras:+[$extras]}"
    "$PY" -c "import cellvit_cli, torch; print('setup: cellvit-cli', cellvit_cli.__version__, 'torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
    echo "$key" >"$stamp"
}

# True when pip would install NVIDIA CUDA packages along with torch ($1, a requirement).
_cellvit_pin_pulls_cuda() {
    "$PY" -m pip install --dry-run --ignore-installed --quiet --report - "$1" 2>/dev/null \
        | "$PY" -c '
import json, sys
try:
    names = [i["metadata"]["name"].lower() for i in json.load(sys.stdin)["install"]]
except Exception:
    sys.exit(1)
sys.exit(not any(n.startswith("nvidia-") for n in names))'
}
