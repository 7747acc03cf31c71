#!/usr/bin/env bash
# Train the memorisation-to-generalisation family: one small UNet (base 16) per subset size N and split A/B,
# all with the same steps, batch and seed, so that only the training images differ.
# Resumable: rerun the script and every network continues from its checkpoint (or only re-exports).
#   OUT=runs/subsets STEPS=2000 BATCH=64 THREADS=1 bash scripts/train_subsets.sh
# Then copy each OUT/nN-S/{unet.pt,card.json} to locality_core/assets/models/fashion-mnist/subsets/nN-S/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/subsets}
STEPS=${STEPS:-2000}
BATCH=${BATCH:-64}
THREADS=${THREADS:-1}
SIZES=${SIZES:-"10 30000 1000 100 10000"}
PY=${PY:-.venv/bin/python}
for n in $SIZES; do
  for split in A B; do
    dir="$OUT/n$n-$split"
    if [ -f "$dir/unet.pt" ]; then
      echo "n=$n $split: done"; continue
    fi
    resume=(); [ -f "$dir/checkpoint.pt" ] && resume=(--resume)
    echo "n=$n $split: training into $dir"
    "$PY" -m locality_core train fashion-mnist --subset "$n" --split "$split" --base 16 \
      --steps "$STEPS" --batch "$BATCH" --threads "$THREADS" --out "$dir" "${resume[@]}"
  done
done
