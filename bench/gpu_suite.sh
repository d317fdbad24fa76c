#!/usr/bin/env bash
# The GPU suite in one call: bench/gpu_suite.sh OUTDIR [--smoke] [more options of bench/gpu_suite.py]
# On a lent GPU machine it runs the CUDA tests and every GPU benchmark in under 8 minutes, writing
# OUTDIR/results.jsonl as it goes; --smoke runs the same steps at toy sizes on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then echo "usage: bench/gpu_suite.sh OUTDIR [--smoke]" >&2; exit 2; fi
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" bench/gpu_suite.py "$@"
