#!/usr/bin/env bash
# Train an AdvFace protector for a recognizer of your own (here: the shared fr128) and use it.
#
#   FACEPRIV_SHARED=/path/to/shared examples/train_protector.sh [RECOGNIZER=fr128] [WORK=runs/my_protector]
#
# A GPU makes this minutes (see advface_sdk/defaults/README.md). On a CPU one shadow epoch over the 6,922 defender
# images already takes minutes: SHADOW_MINUTES / GEN_MINUTES (default 30 / 15) cap each training, DEVICE picks
# cpu / cuda (default auto). Needs the project's virtual environment on PATH (advface-cli, python).
set -euo pipefail
if [ -z "${FACEPRIV_SHARED:-}" ]; then
    echo "error: set FACEPRIV_SHARED to the shared data folder (see README)" >&2; exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
R=${1:-fr128}; WORK=${2:-runs/my_protector}; DEVICE=${DEVICE:-auto}
mkdir -p "$WORK"
advface-cli pack "$FACEPRIV_SHARED/data/lfw/aligned112" -r "$R" --group defender --out "$WORK/pack.npz"
advface-cli train-shadow "$WORK/pack.npz" -r "$R" --out "$WORK/shadow" --epochs 80 --max-minutes "${SHADOW_MINUTES:-30}" --device "$DEVICE"
advface-cli train-generator "$WORK/pack.npz" -r "$R" --shadow "$WORK/shadow" --out "$WORK/protector" --budget 0.8 \
    --epochs 400 --lr 2e-3 --max-minutes "${GEN_MINUTES:-15}" --device "$DEVICE"
advface-cli info "$WORK/protector"
# utility on LFW folds 6-10 and privacy against the shadow, written beside the protector (not over the published
# benchmarks/results/advface_core_$R.json)
python "$ROOT/benchmarks/advface_core_eval.py" --recognizer "$R" --shadow "$WORK/shadow" --artifact "$WORK/protector" \
    --out "$WORK/advface_core_$R.json"
# multi-process (DDP): torchrun --nproc_per_node 2 -m advface_sdk train-shadow ... (gloo on CPU, NCCL on GPU)
