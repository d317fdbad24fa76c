"""Which device runs the model, and what it can do: CUDA, then Apple MPS, then the CPU; bfloat16
matrix units on the CPU; the process's place in a torchrun job."""

from __future__ import annotations

import os

import torch

from .errors import InferenceError


def pick_device(name: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU, unless ``name`` says otherwise."""
    if name:
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise InferenceError(f"unknown device {name!r}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InferenceError(f"device {name!r} asked for, but no CUDA GPU is available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "GPU: Apple MPS"
    return "CPU"


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def cpu_bf16_fast() -> bool:
    """Whether this CPU has bfloat16 matrix units (Intel AMX), where oneDNN runs bfloat16
    convolutions several times faster than float32; laptops without them keep float32.
    bench/RESULTS.md has the measurement behind it. ``LOUPE_CPU_BF16=0`` turns it off."""
    if os.environ.get("LOUPE_CPU_BF16", "1") == "0":
        return False
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe and probe())
    except (RuntimeError, AttributeError):
        return False


def cpu_autocast(amp: bool, world: int) -> bool:
    """Whether a CPU run trains under bfloat16 autocast: asked for (``amp``), AMX there, and one
    process only (a two-process gloo run with bfloat16 had a rank abort in 2 of ~4 test runs,
    cause not found). detector.training runs it so, and the CPU profile is chosen by it."""
    return amp and world == 1 and cpu_bf16_fast()


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank); under torchrun even with one process, so that a single-GPU
    torchrun run takes the same DistributedDataParallel path (and NCCL) as a multi-GPU one."""
    if "WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ or \
            int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0
