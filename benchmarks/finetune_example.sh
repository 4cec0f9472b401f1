#!/usr/bin/env bash
# `cellvit train --init`, measured: the shipped model adapted to a kind of image it never
# saw (DSB2018's 16 grey brightfield images: dark nuclei on a bright background) from 10
# annotated images (8 to train on, 2 to validate), scored on the other 6, against the
# shipped model as it is (plain and --invert) and against the same training from random
# weights.
#   bash benchmarks/finetune_example.sh [DATA (../shared/data/dsb2018)] [OUT (/tmp/finetune)]
# Needs the package installed (cellvit on PATH). Writes OUT/report.md with the scores.
set -euo pipefail
DATA="${1:-../shared/data/dsb2018}"; OUT="${2:-/tmp/finetune}"
TRAIN_IDS="$OUT/train10.txt"; EVAL_IDS="$OUT/eval6.txt"; IMG="$DATA/train/images"; MASKS="$DATA/train/masks"
mkdir -p "$OUT/eval/images" "$OUT/eval/masks"
tr -d '\r' < "$DATA/train/metadata.csv" | grep ',brightfield_grey$' | cut -d, -f1 | sort > "$OUT/all.txt"
head -n 10 "$OUT/all.txt" > "$TRAIN_IDS"; tail -n +11 "$OUT/all.txt" > "$EVAL_IDS"
while read -r id; do
    cp "$IMG/$id.tif" "$OUT/eval/images/"; cp "$MASKS/$id.tif" "$OUT/eval/masks/"
done < "$EVAL_IDS"
# 8 of the 10 train, 2 choose the epoch and tune the thresholds; 1,000 steps = 8,000 crops
STEPS=(--val-fraction 0.2 --val-every 10 --epochs 100 --steps-per-epoch 10 --batch-size 8 --crop-size 128 --seed 0)

score() {  # score NAME [segment options...]
    local name="$1"; shift
    cellvit segment "$OUT/eval/images" -o "$OUT/pred_$name" --overwrite "$@" 2> "$OUT/segment_$name.log"
    cellvit evaluate --pred "$OUT/pred_$name" --gt "$OUT/eval/masks" -o "$OUT/score_$name" > /dev/null
    python - "$name" "$OUT/score_$name/summary.json" >> "$OUT/report.md" <<'PY'
import json, sys
h = json.load(open(sys.argv[2]))["headline"]
print(f"| {sys.argv[1]} | {h['ap_50']:.3f} | {h['ap_75']:.3f} | {h['mean_ap']:.3f} |")
PY
}

echo "| model (6 held-out brightfield images) | AP@0.5 | AP@0.75 | AP@0.5:0.95 |" > "$OUT/report.md"
echo "|---|---|---|---|" >> "$OUT/report.md"
# the measured table in docs/training.md is of model v1 (BASE=nuclei_fluo_tiny, variant
# vit_tiny_p16); for model v2: BASE=nuclei_fluo_v2 VARIANT=vit_tiny_p16_s2
BASE=${BASE:-nuclei_fluo_tiny}
VARIANT=${VARIANT:-vit_tiny_p16}
score shipped --model "$BASE"
score shipped_invert --model "$BASE" --invert
cellvit train --images "$IMG" --masks "$MASKS" --ids-file "$TRAIN_IDS" --init "$BASE" \
    --lr 2e-4 "${STEPS[@]}" -o "$OUT/init" --overwrite > "$OUT/init.log" 2>&1
score init --model "$OUT/init"
cellvit train --images "$IMG" --masks "$MASKS" --ids-file "$TRAIN_IDS" --variant "$VARIANT" \
    --heads star,flow,boundary --lr 5e-4 "${STEPS[@]}" -o "$OUT/scratch" --overwrite > "$OUT/scratch.log" 2>&1
score scratch --model "$OUT/scratch"
cat "$OUT/report.md"
