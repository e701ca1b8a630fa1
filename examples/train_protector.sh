#!/usr/bin/env bash
# Train an AdvFace protector for a recognizer of your own (here: the shared fr128) and use it.
# A GPU makes this minutes (see advface_sdk/defaults/README.md); on a CPU lower --epochs / use --max-minutes.
set -euo pipefail
: "${FACEPRIV_SHARED:?set FACEPRIV_SHARED to the shared data folder (see README)}"
R=${1:-fr128}; WORK=${2:-runs/my_protector}; DEVICE=${DEVICE:-auto}
mkdir -p "$WORK"
advface-cli pack "$FACEPRIV_SHARED/data/lfw/aligned112" -r "$R" --group defender --out "$WORK/pack.npz"
advface-cli train-shadow "$WORK/pack.npz" -r "$R" --out "$WORK/shadow" --epochs 80 --max-minutes "${SHADOW_MINUTES:-30}" --device "$DEVICE"
advface-cli train-generator "$WORK/pack.npz" -r "$R" --shadow "$WORK/shadow" --out "$WORK/protector" --budget 0.8 \
    --epochs 400 --lr 2e-3 --max-minutes "${GEN_MINUTES:-15}" --device "$DEVICE"
advface-cli info "$WORK/protector"
python benchmarks/advface_core_eval.py --recognizer "$R" --shadow "$WORK/shadow" --artifact "$WORK/protector"
# multi-process (DDP): torchrun --nproc_per_node 2 -m advface_sdk train-shadow ... (gloo on CPU, NCCL on GPU)
