"""Write deploy/compose.gpu.yaml: one training worker per NVIDIA GPU, each pinned to its own device.

`docker compose --scale` cannot give replicas different devices (every replica of a service gets
the same reservation, so all of them would train on GPU 0); one service per GPU can.

    python deploy/compose_gpu.py 4      # or: python deploy/compose_gpu.py "$(nvidia-smi -L | wc -l)"
    docker compose -f deploy/compose.yaml -f deploy/compose.gpu.yaml up -d
"""
from __future__ import annotations

import sys
from pathlib import Path

HEADER = """# Written by deploy/compose_gpu.py for {n} GPU(s): one training worker per GPU, each pinned to its own
# device (needs the NVIDIA Container Toolkit). The CPU training workers of compose.yaml are scaled to 0.
#   docker compose -f deploy/compose.yaml -f deploy/compose.gpu.yaml up -d
services:
  worker-train:
    deploy:
      replicas: 0
"""
WORKER = """  worker-gpu-{i}:
    extends:
      file: compose.yaml
      service: worker-train
    environment:
      CLAAS_WORKER_DEVICE: cuda
    depends_on:
      migrate:
        condition: service_completed_successfully
      redis:
        condition: service_healthy
      mlflow:
        condition: service_healthy
    deploy:
      replicas: 1
      resources:
        reservations:
          devices:
            - driver: nvidia
              device_ids: ["{i}"]
              capabilities: [gpu]
"""


def compose_gpu(n: int) -> str:
    if n < 1:
        raise ValueError("at least one GPU")
    return HEADER.format(n=n) + "".join(WORKER.format(i=i) for i in range(n))


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    target = Path(__file__).with_name("compose.gpu.yaml")
    target.write_text(compose_gpu(count))
    print(f"wrote {target} for {count} GPU(s)")
