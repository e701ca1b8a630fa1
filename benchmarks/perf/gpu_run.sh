#!/usr/bin/env bash
# GPU deployment check and performance run, one command (typically 2 minutes on an H100; the step timeouts add up to 4):
#   1. tests/test_deploy.py (GPU/TensorRT paths run where available, skip with a reason otherwise)
#   2. benchmarks/perf/test_perf_gpu.py: protect() per backend and batch on the GPU, fr128 on the GPU
#   3. the ONNX Runtime / recognizer / baseline part of the CPU suite on the same machine's CPU
#   4. summarize.py -> $OUT/perf_gpu.md + $OUT/perf_gpu.json (raw pytest-benchmark JSON and log beside them)
# Usage, from the repository root: OUT=/some/dir bash benchmarks/perf/gpu_run.sh
# The fr128 rows need the shared models: FACEPRIV_SHARED, or a carried .carry/shared (models/ is enough).
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FACEPRIV_CACHE=${FACEPRIV_CACHE:-/tmp/fpcache}
if [ -z "${FACEPRIV_SHARED:-}" ]; then
  for d in .carry/shared shared ../shared; do
    if [ -d "$d/models" ]; then export FACEPRIV_SHARED="$(cd "$d" && pwd)"; break; fi
  done
fi
PY=${PYTHON:-python3}
LOG="$OUT/perf_gpu_log.txt"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  $PY -c 'import torch, onnxruntime as o; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), "| onnxruntime", o.__version__, o.get_available_providers())'
  $PY -c 'import tensorrt; print("tensorrt", tensorrt.__version__)' 2>&1 | tail -n 1
  echo "FACEPRIV_SHARED=${FACEPRIV_SHARED:-unset}"
  echo "== tests/test_deploy.py"
  timeout 45 $PY -m pytest -q -rs tests/test_deploy.py 2>&1
  echo "== GPU benchmarks"
  timeout 90 $PY -m pytest -q -rs benchmarks/perf/test_perf_gpu.py -k "not torch_compile" --benchmark-enable \
      --benchmark-max-time=0.5 --benchmark-columns=median,iqr,rounds --benchmark-json="$OUT/perf_gpu_raw.json" 2>&1
  echo "== torch.compile (separate run: compilation time must not cost the results above)"
  timeout 60 $PY -m pytest -q -rs benchmarks/perf/test_perf_gpu.py -k "torch_compile" --benchmark-enable \
      --benchmark-max-time=0.5 --benchmark-columns=median,iqr,rounds --benchmark-json="$OUT/perf_gpu_compile_raw.json" 2>&1
  echo "== CPU benchmarks on this machine"
  timeout 45 $PY -m pytest -q -rs benchmarks/perf/test_perf_cpu.py --benchmark-enable --benchmark-max-time=0.3 \
      -k "test_protect_onnxruntime or recognizer or (baseline and not 1024)" \
      --benchmark-columns=median,iqr,rounds --benchmark-json="$OUT/perf_gpu_cpu_raw.json" 2>&1
  echo "== summary"
  raws=$(ls "$OUT"/perf_gpu_raw.json "$OUT"/perf_gpu_compile_raw.json "$OUT"/perf_gpu_cpu_raw.json 2>/dev/null)
  $PY benchmarks/perf/summarize.py $raws --out "$OUT/perf_gpu" --title "protect() performance, GPU machine" 2>&1
} 2>&1 | tee "$LOG"
