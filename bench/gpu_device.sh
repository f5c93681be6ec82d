#!/usr/bin/env bash
# Benchmark 2 on the lent GPU machine (Python 3.12 with torch, numpy & co. already there, no network):
# installs the wheel bundle .whl/ (built by bench/gpu_bundle.sh; git-ignored, so it must be carried) into
# /tmp/site, then runs bench/gpu_overhead.py at full size and leaves gpu.md and gpu.log in $OUT.
#
#   run(command="bash bench/gpu_device.sh", carry=[".whl"], timeout_s=540)
#
# Extra arguments go to bench.gpu_overhead (e.g. --rounds 1 --epochs 5 to shorten it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/claas-gpu-out}"
PY="${PYTHON:-python3}"
SITE="${CLAAS_BUNDLE_SITE:-/tmp/site}"
mkdir -p "$OUT"

ls .whl/*.whl >/dev/null 2>&1 || { echo "no .whl/*.whl here: carry .whl with the run" >&2; exit 3; }
began=$(date +%s)
if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        .whl/*.whl >"$OUT/pip.log" 2>&1; then
    cat "$OUT/pip.log" >&2; exit 4
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MLFLOW_DISABLE_TELEMETRY=true
echo "bundle installed in $SITE in $(( $(date +%s) - began )) s"

nvidia-smi -L || echo "(nvidia-smi failed)"
nproc
"$PY" - <<'EOF'
import sys, numpy, torch, django, avalanche, mlflow
print(f"python {sys.version.split()[0]} ({sys.executable}); numpy {numpy.__version__}; torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, available {torch.cuda.is_available()}, {torch.get_num_threads()} threads; "
      f"django {django.__version__}; avalanche {avalanche.__version__}; mlflow {mlflow.__version__}")
from importlib.metadata import version
print("; ".join(f"{n} {version(n)}" for n in ("torchvision", "scipy", "scikit-learn", "pandas", "typing_extensions",
                                                "attrs", "anyio", "protobuf", "requests")))
EOF

set -o pipefail
"$PY" -m bench.gpu_overhead --out "$OUT/gpu.md" "$@" 2>&1 | tee "$OUT/gpu.log"
echo "device script done in $(( $(date +%s) - began )) s"
