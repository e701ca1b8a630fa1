#!/usr/bin/env bash
# One-command entry points on a fresh machine:
#   ./run.sh        install (first time) and run the main job: embed LFW, protect, verify, attack, report,
#                   then draw faces of virtual identities with the shipped VIGFace pipeline (runs/demo/virtual_identities.png)
#   ./run.sh test   install (first time) and run the test suite
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${FACEPRIV_SHARED:-}" ] && [ -d ../shared/data/lfw ]; then export FACEPRIV_SHARED="$(cd ../shared && pwd)"; fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
fi
case "${1:-demo}" in
  test) shift; exec .venv/bin/python -m pytest -q "$@" ;;
  demo) shift || true; .venv/bin/advface-cli demo "$@"; exec .venv/bin/vigface-cli demo ;;
  *) echo "usage: ./run.sh [demo|test] [args...]" >&2; exit 2 ;;
esac
