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
    """Whether this CPU has bfloat16 arithmetic in hardware, where oneDNN runs bfloat16
    convolutions faster than float32: Intel's AMX tiles, or AVX-512 BF16's dot products (AMD Zen 4
    and later, Intel Cooper Lake). CPUs with neither (most laptops before 2023, AVX2 only) keep
    float32, where bfloat16 would be emulated. bench/RESULTS.md has the measurements behind it.
    ``LOUPE_CPU_BF16=0`` turns it off; ``LOUPE_CPU_BF16=amx`` asks for the matrix units only."""
    setting = os.environ.get("LOUPE_CPU_BF16", "1")
    if setting == "0":
        return False
    probes = ("_is_amx_tile_supported",) if setting == "amx" else \
        ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except (RuntimeError, AttributeError):
            continue
    return False


def cpu_autocast(amp: bool, world: int) -> bool:
    """Whether a CPU run trains under bfloat16 autocast: asked for (``amp``), bfloat16 in the
    CPU's hardware (``cpu_bf16_fast``), and one process only (a two-process gloo run with bfloat16
    had a rank abort in 2 of ~4 test runs, cause not found). detector.training runs it so, and the
    CPU profile is chosen by it."""
    return amp and world == 1 and cpu_bf16_fast()


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank); under torchrun even with one process, so that a single-GPU
    torchrun run takes the same DistributedDataParallel path (and NCCL) as a multi-GPU one."""
    if "WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ or \
            int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0
