#!/usr/bin/env bash
# From a fresh clone to labels on disk in one command: sets up .venv (scripts/setup_env.sh:
# torch first, then this package; reused on a second run), then segments every TIFF of
# sample_data/ with the shipped model into out/, with an overlay. Extra arguments go to
# `cellvit segment` (e.g. --measure, --overwrite). Nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
cellvit_setup

"$VENV/bin/cellvit" segment sample_data -o out --overlay "$@"
shopt -s nullglob
labels=("$PWD"/out/*_labels.tif)
overlays=("$PWD"/out/*_overlay.png)
echo "labels: ${labels[*]:-none}  overlay: ${overlays[*]:-none}"
