#!/usr/bin/env bash
# One-command GPU check (docs/benchmarks.md, "GPU check"): the CUDA tests, the no-host-sync check of
# every masking strategy, python -m gm.bench --parts gpu, and 100 steps of train.py model=dnabert
# trainer=gpu masking=genemask; writes gpu_check.json and gpu_check.md into the folder given
# (default outputs/gpu_check/<UTC time>). Without a CUDA device: one line, exit 2.
#   bash scripts/gpu_check.sh [out folder]
set -euo pipefail
cd "$(dirname "$0")/.."
# the project's virtual environment when none is active (README: python3 -m venv .venv)
python=python
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
exec "$python" -m gm.bench.gpu_check "$@"
