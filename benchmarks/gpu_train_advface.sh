#!/usr/bin/env bash
# Train the default AdvFace artifacts for one shared recognizer on a GPU machine.
# Usage: benchmarks/gpu_train_advface.sh RECOGNIZER PACK OUTDIR [BUDGETS...]
# PACK comes from: advface-cli pack $FACEPRIV_SHARED/data/lfw/aligned112 -r RECOGNIZER --group defender --out PACK
set -euo pipefail
rec=$1; pack=$2; out=$3; shift 3
budgets=${*:-0.5}
py="python -m advface_sdk"
$py train-shadow "$pack" -r "$rec" --out "$out/shadow" --epochs 80 --batch-size 128 --max-minutes "${SHADOW_MINUTES:-4}" --device cuda
for b in $budgets; do
  $py train-generator "$pack" -r "$rec" --shadow "$out/shadow" --out "$out/gen_$b" --budget "$b" --epochs 400 --lr 2e-3 \
      --max-minutes "${GEN_MINUTES:-1}" --device cuda
done
