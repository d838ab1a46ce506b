"""The GPUs a device spec names, known without importing torch (the supervisor decides how many
processes to start before any of them loads a model)."""

from __future__ import annotations

import os
from pathlib import Path


def gpu_count(device_spec: str) -> int:
    """How many GPUs the engine will run on, known without importing torch: an explicit device
    list names them; for ``auto`` and ``cuda``, the NVIDIA driver lists its GPUs under
    /proc/driver/nvidia/gpus, and CUDA_VISIBLE_DEVICES may hide some or all of them."""
    spec = (device_spec or "auto").strip().lower()
    if spec not in ("auto", "cuda"):
        return len({part.strip() for part in spec.split(",") if part.strip().startswith("cuda")})
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", None)
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    gpus = Path("/proc/driver/nvidia/gpus")
    present = sum(1 for _ in gpus.iterdir()) if gpus.is_dir() else 0
    if visible is not None:
        present = min(present, len([v for v in visible.split(",") if v.strip()]))
    return present
