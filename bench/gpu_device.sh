#!/usr/bin/env bash
# What the device tool runs on a lent GPU machine (after bench/gpu_pack.sh here):
#   bench/gpu_device.sh [extra gpu_suite.py options]     (results under $OUT)
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${OUT:-/tmp/out}"
mkdir -p /tmp/loupe && tar xf .gpu/site.tar.xz -C /tmp/loupe
mkdir -p /tmp/loupe/lib
for f in /tmp/loupe/site/_syslibs/*; do
  name=$(basename "$f")
  ldconfig -p | grep -q "^[[:space:]]*$name " || cp "$f" /tmp/loupe/lib/
done
echo "system libraries brought: $(ls /tmp/loupe/lib | tr '\n' ' ')"
# LOUPE_OFFLINE: the device reaches nothing outside, so no run waits on a download (detector/trunk.py)
export PYTHONPATH=/tmp/loupe/site LD_LIBRARY_PATH=/tmp/loupe/lib:${LD_LIBRARY_PATH:-} PYTHON=python3 LOUPE_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision, pycocotools, PySide6.QtCharts; print('torch', torch.__version__, torchvision.__version__, torch.cuda.get_device_name(0))"
# results.jsonl is written straight into $OUT, line by line: a cut-off call still brings it back
bench/gpu_suite.sh /tmp/suite --nuclei .gpu/nuclei --results "$OUTDIR/results.jsonl" "$@"
rc=$?
tar czf "$OUTDIR/logs.tgz" -C /tmp suite
exit $rc
