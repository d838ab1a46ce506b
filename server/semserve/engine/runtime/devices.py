"""Which devices replicas go to, and which compute type they use there."""

from __future__ import annotations

import torch

from semserve.config import ConfigError

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_devices(spec: str) -> list[str]:
    """'auto' is every visible GPU, else the CPU; 'cuda' every GPU; or an explicit list.

    A device named twice holds two replicas, each with its own worker (and CUDA graphs): one
    replica's host work then overlaps the other's device work, and a one-GPU machine can
    rehearse what several GPUs do."""
    spec = (spec or "auto").strip().lower()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return [f"cuda:{i}" for i in range(gpus)] or ["cpu"]
    if spec == "cpu":
        return ["cpu"]
    if spec == "cuda":
        if not gpus:
            raise ConfigError("device 'cuda' asked for, but torch sees no GPU (is this a CPU build of torch?)")
        return [f"cuda:{i}" for i in range(gpus)]
    devices = []
    for part in spec.split(","):
        part = part.strip()
        if part == "cpu":
            devices.append("cpu")
            continue
        if not part.startswith("cuda:") or not part[5:].isdigit():
            raise ConfigError(f"unknown device {part!r}: use auto, cpu, cuda or a list like cuda:0,cuda:1")
        index = int(part[5:])
        if index >= gpus:
            raise ConfigError(f"device {part} asked for, but torch sees {gpus} GPU(s)")
        devices.append(part)
    return devices


def resolve_dtype(spec: str, device: str) -> torch.dtype:
    """'auto' is float16 on a GPU (tensor cores) and float32 on the CPU (exact, and fast there)."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if spec not in _DTYPES:
        raise ConfigError(f"unknown dtype {spec!r}: use auto, float32, float16 or bfloat16")
    return _DTYPES[spec]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
