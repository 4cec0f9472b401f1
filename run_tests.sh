#!/usr/bin/env bash
# The test suite in one command: the set-up of run_sample.sh (scripts/setup_env.sh) plus the
# [test] extras, then the test command of README.md. Arguments go to pytest (e.g. --runslow,
# -k NAME); the exit code is pytest's.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_env.sh
cellvit_setup test

exec "$VENV/bin/python" -m pytest -q "$@"
