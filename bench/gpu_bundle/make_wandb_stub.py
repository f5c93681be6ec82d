"""Build claas_wandb_stub-0.1.0-py3-none-any.whl: a top-level `wandb` module for the GPU bundle.

avalanche-lib 0.6 imports `wandb` when `avalanche.evaluation.metrics` is imported
(metrics/confusion_matrix.py), although CLaaS never logs to Weights & Biases; the real wheel
(20 MB, plus OpenTelemetry exporters) does not fit the bundle. Any use of the stub fails loudly."""
import base64, hashlib, sys, zipfile
from pathlib import Path

NAME, VERSION = "claas_wandb_stub", "0.1.0"
INIT = '''"""Stand-in for Weights & Biases (claas_wandb_stub): lets `import wandb` succeed for avalanche-lib,
which imports it at import time; CLaaS never uses it. Every attribute is missing."""
__version__ = "0.0.0+claas.stub"


def __getattr__(name):
    raise AttributeError(f"wandb is a stub here (claas_wandb_stub), it has no {name!r}; install the real wandb")
'''
DI = f"{NAME}-{VERSION}.dist-info"
files = {
    "wandb/__init__.py": INIT,
    f"{DI}/METADATA": f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\nSummary: import-only stand-in for wandb\n",
    f"{DI}/WHEEL": "Wheel-Version: 1.0\nGenerator: claas\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    f"{DI}/top_level.txt": "wandb\n",
}
def digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
record = "".join(f"{p},{digest(t.encode())},{len(t.encode())}\n" for p, t in files.items()) + f"{DI}/RECORD,,\n"
files[f"{DI}/RECORD"] = record
out = Path(sys.argv[1] if len(sys.argv) > 1 else ".") / f"{NAME}-{VERSION}-py3-none-any.whl"
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for p, t in files.items():
        z.writestr(p, t)
print(out)
