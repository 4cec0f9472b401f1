#!/usr/bin/env bash
# cellvit vs StarDist and Cellpose on DSB2018 test_fluo, with matched training budgets.
#
#   bash benchmarks/peers/run_all.sh                 # every stage, in order
#   bash benchmarks/peers/run_all.sh train_stardist  # or any stages, in the order given
#
# Stages: setup data train_stardist train_cellpose train_parallel predict evaluate report;
# train_parallel (used by all) trains both peers at once, each pinned to its own core with one
# thread: MINUTES buys each peer MINUTES core-minutes, on a 2-core machine in MINUTES of wall
# time (see docs/benchmarks.md, "The matched-budget rule").
# Every stage skips what is already done (a trained model, a finished prediction folder), so a
# run cut short (a session's time limit) goes on where it stopped when run again.
# Settings (environment): MINUTES (110) training budget of each peer; CELLVIT_MODEL (the shipped
# default) the model folder or name for `cellvit segment`; CELLVIT_CORES (2) the cores that
# model was trained on, for the report; TAG (full) names the run:
# models in $PEERS_HOME/models/$TAG, results in $PEERS_HOME/runs/$TAG, links in /tmp.
# Smoke test: TAG=smoke MINUTES=0.5 TRAIN_LIMIT=8 VAL_LIMIT=3 TEST_LIMIT=2 N_MOSAICS=1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export PEERS_HOME="${PEERS_HOME:-$HOME/.cache/cellvit-peers}"
STARDIST_VENV="${STARDIST_VENV:-$PEERS_HOME/stardist-venv}"
CELLPOSE_VENV="${CELLPOSE_VENV:-$PEERS_HOME/cellpose-venv}"
DATA="${DATA:-$(cd "$REPO/.." && pwd)/shared/data/dsb2018}"
MINUTES="${MINUTES:-110}"
TAG="${TAG:-full}"
MODELS="${MODELS:-$PEERS_HOME/models/$TAG}"
RUN="${RUN:-$PEERS_HOME/runs/$TAG}"
WORK="${WORK:-/tmp/cellvit-peers-$TAG}"
CELLVIT_MODEL="${CELLVIT_MODEL:-}"
CELLVIT_CORES="${CELLVIT_CORES:-2}"
TRAIN_LIMIT="${TRAIN_LIMIT:-}"
VAL_LIMIT="${VAL_LIMIT:-}"
TEST_LIMIT="${TEST_LIMIT:-}"
N_MOSAICS="${N_MOSAICS:-4}"
MOSAIC_SIZE="${MOSAIC_SIZE:-2048}"
PYTHON="${PYTHON:-python3}"          # the environment where cellvit-cli is installed
CELLVIT="${CELLVIT:-cellvit}"
SETS=(test_fluo mosaics)
METHODS=(cellvit stardist cellpose)

limit_args() {  # limit_args OPTION VALUE: "--option value" when VALUE is set
    [[ -n "$2" ]] && echo "$1 $2" || true
}

log() { echo "[run_all $(date -u +%H:%M:%S)] $*"; }

stage_setup() {
    bash "$HERE/setup_envs.sh"
}

stage_data() {
    # test_fluo as folders of links (the split's ids only), and the mosaics
    for kind in images masks; do
        rm -rf "$WORK/test_fluo/$kind"
        mkdir -p "$WORK/test_fluo/$kind"
    done
    local ids
    ids=$(grep -v '^\s*$' "$DATA/splits/test_fluo.txt")
    [[ -n "$TEST_LIMIT" ]] && ids=$(echo "$ids" | head -n "$TEST_LIMIT")
    for id in $ids; do
        ln -s "$DATA/test/images/$id.tif" "$WORK/test_fluo/images/$id.tif"
        ln -s "$DATA/test/masks/$id.tif" "$WORK/test_fluo/masks/$id.tif"
    done
    rm -rf "$WORK/mosaics"
    "$PYTHON" "$HERE/mosaics.py" "$WORK/mosaics" --count "$N_MOSAICS" --size "$MOSAIC_SIZE" \
        --data "$DATA"
    log "data: $(ls "$WORK/test_fluo/images" | wc -l) test_fluo images, $N_MOSAICS mosaics in $WORK"
}

train_peer() {  # train_peer PEER VENV: train_PEER.py in its venv, summary into $RUN/train
    local peer="$1" venv="$2"
    log "training $peer for $MINUTES min"
    "$venv/bin/python" "$HERE/train_$peer.py" --minutes "$MINUTES" --data "$DATA" \
        --out "$MODELS/$peer" $(limit_args --limit "$TRAIN_LIMIT") \
        $(limit_args --val-limit "$VAL_LIMIT") 2>&1 | tee "$RUN/logs/train_$peer.log"
    cp "$MODELS/$peer/train_summary.json" "$RUN/train/$peer.json"
}

stage_train_stardist() { train_peer stardist "$STARDIST_VENV"; }

stage_train_cellpose() { train_peer cellpose "$CELLPOSE_VENV"; }

stage_train_parallel() {
    # one core and one thread each (taskset + the thread variables torch and TensorFlow read)
    local one=(env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1
               TF_NUM_INTEROP_THREADS=1)
    "${one[@]}" taskset -c 0 bash "${BASH_SOURCE[0]}" train_stardist &
    local stardist_pid=$!
    "${one[@]}" taskset -c 1 bash "${BASH_SOURCE[0]}" train_cellpose &
    local cellpose_pid=$!
    local failed=0
    wait "$stardist_pid" || failed=1
    wait "$cellpose_pid" || failed=1
    return "$failed"
}

predict_one() {  # predict_one METHOD SET: labels + timings into $RUN/pred/METHOD/SET
    local method="$1" set="$2" out="$RUN/pred/$1/$2"
    if [[ -f "$out/wall_seconds.txt" ]]; then
        log "predict $method $set: done before"
        return
    fi
    rm -rf "$out"
    mkdir -p "$out"
    log "predict $method $set"
    local start end
    start=$(date +%s.%N)
    case "$method" in
        cellvit)
            "$CELLVIT" segment "$WORK/$set/images" -o "$out" --device cpu --overwrite \
                ${CELLVIT_MODEL:+--model "$CELLVIT_MODEL"} 2>&1 | tee "$RUN/logs/cellvit_$set.log" ;;
        stardist)
            "$STARDIST_VENV/bin/python" "$HERE/predict.py" stardist "$WORK/$set/images" \
                --model "$MODELS/stardist" -o "$out" 2>&1 | tee "$RUN/logs/stardist_$set.log" ;;
        cellpose)
            "$CELLPOSE_VENV/bin/python" "$HERE/predict.py" cellpose "$WORK/$set/images" \
                --model "$MODELS/cellpose" -o "$out" 2>&1 | tee "$RUN/logs/cellpose_$set.log" ;;
    esac
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }' > "$out/wall_seconds.txt"
}

stage_predict() {
    # one after the other, nothing else running: the timings share the machine's state
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
        log "warning: load average $load before timing: something else is using the CPU"
    fi
    for set in "${SETS[@]}"; do
        for method in "${METHODS[@]}"; do
            predict_one "$method" "$set"
        done
    done
}

stage_evaluate() {
    for set in "${SETS[@]}"; do
        for method in "${METHODS[@]}"; do
            [[ -f "$RUN/pred/$method/$set/wall_seconds.txt" ]] || continue
            "$CELLVIT" evaluate --pred "$RUN/pred/$method/$set" --gt "$WORK/$set/masks" \
                -o "$RUN/eval/$method/$set" > "$RUN/logs/evaluate_${method}_$set.log"
            log "evaluate $method $set: $(tail -n 1 "$RUN/logs/evaluate_${method}_$set.log")"
        done
    done
}

stage_report() {
    local model_dir
    model_dir=$("$PYTHON" -c "import sys; from cellvit_cli.modeling.folder import resolve_model
print(resolve_model(sys.argv[1] or None))" "$CELLVIT_MODEL")
    "$PYTHON" "$HERE/report.py" "$RUN" --cellvit-model "$model_dir" \
        --cellvit-cores "$CELLVIT_CORES" --gt "$WORK/test_fluo/masks"
}

write_run_json() {
    "$PYTHON" - "$RUN/run.json" "$MINUTES" "${CELLVIT_MODEL:-default}" "$TAG" "$REPO" \
        "$N_MOSAICS" "$MOSAIC_SIZE" <<'PY'
import json, os, subprocess, sys, time
path, minutes, model, tag, repo, n_mosaics, mosaic_size = sys.argv[1:]
old = json.load(open(path)) if os.path.exists(path) else {}
commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                        capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
old.setdefault("started_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
old.update({"minutes": float(minutes), "cellvit_model": model, "tag": tag, "commit": commit,
            "machine": f"{os.cpu_count()} x {cpu}", "n_mosaics": int(n_mosaics),
            "mosaic_size": int(mosaic_size),
            "load_average_at_last_stage": os.getloadavg()})
json.dump(old, open(path, "w"), indent=2)
PY
}

main() {
    local stages=("$@")
    [[ ${#stages[@]} -eq 0 || "${stages[0]}" == "all" ]] &&
        stages=(setup data train_parallel predict evaluate report)
    mkdir -p "$RUN/logs" "$RUN/train" "$MODELS"
    log "run $TAG: results in $RUN, models in $MODELS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for stage in "${stages[@]}"; do
        declare -F "stage_$stage" > /dev/null || { echo "unknown stage: $stage" >&2; exit 2; }
        [[ "$stage" == predict || "$stage" == evaluate ]] && [[ ! -d "$WORK/test_fluo" ]] && stage_data
        write_run_json
        "stage_$stage"
    done
}

main "$@"
