#!/usr/bin/env bash
# Build .whl/, the wheels that bench/gpu_device.sh installs on a lent GPU machine (Python 3.12 with
# torch, numpy, scipy and scikit-learn already there, no network): everything else the service needs,
# at requirements.lock's versions, for CPython 3.12 on x86-64 (about 41 MB). Run here, where pip can
# download; then `bash bench/gpu_device.sh` there, carrying .whl.
#   - bench/gpu_bundle/requirements-gpu.txt: the packages the GPU machine lacks (--no-deps: complete list)
#   - GPUtil has no wheel on PyPI: built here from its source archive
#   - wandb: avalanche-lib imports it at import time; the real wheel does not fit, an import-only stand-in does
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-.whl}"  # another folder to try it out
mkdir -p "$OUTDIR"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY="${PYTHON:-python3}"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64 -d "$OUTDIR" -r bench/gpu_bundle/requirements-gpu.txt
"$PY" -m pip wheel --quiet --no-deps -w "$OUTDIR" GPUtil==1.4.0
"$PY" bench/gpu_bundle/make_wandb_stub.py "$OUTDIR" >/dev/null
echo "$(ls "$OUTDIR"/*.whl | wc -l) wheels in $OUTDIR ($(du -sh "$OUTDIR" | cut -f1))"
