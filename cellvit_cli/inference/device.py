"""Which device runs the network, and at what precision."""

import contextlib

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """A torch device from 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.

    'auto' picks CUDA, then MPS, then the CPU. Raises ValueError for a name this machine
    cannot run (e.g. 'cuda' without a CUDA device), with a one-line reason.
    """
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: use one of "
                         f"{', '.join(DEVICE_CHOICES)}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not _mps_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}: use one of {', '.join(DEVICE_CHOICES)}")
    return device


def default_batch_size(device: torch.device) -> int:
    """Tiles per network batch: 8 on a GPU; 1 on the CPU, where larger batches fall out of
    cache (1.86x slower at 4 than at 1 on 2 cores, docs/benchmarks.md)."""
    return 1 if device.type == "cpu" else 8


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op elsewhere."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def is_out_of_memory(err: BaseException) -> bool:
    """True for a CUDA (or MPS) out-of-memory error."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # what decides CPU speed here


def cpu_description() -> str:
    """'AMD EPYC, 2 cores, avx2 avx512f avx512_bf16': the CPU named beside benchmark figures
    (model name and flags from /proc/cpuinfo where there is one)."""
    import os
    import platform

    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    found = " ".join(f for f in CPU_FEATURES if f in flags)
    return f"{name}, {cores} cores" + (f", {found}" if found else "")
