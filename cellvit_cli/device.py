"""Which device runs the network, and at what precision."""

import contextlib
import logging

import torch

from cellvit_cli.settings import PRECISION_CHOICES

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (AVX512-BF16, AMX)
CPUINFO = "/proc/cpuinfo"


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


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the network on `device` for 'auto', 'fp32' or 'bf16' (None: fp32).

    'auto': bf16 on CUDA where supported (else fp16) and on CPUs with native bf16
    (`cpu_supports_bf16`); fp32 elsewhere (MPS, other CPUs). 'bf16' is honoured everywhere,
    with a warning where it is emulated (slow). ValueError for another name.
    """
    name = str(name).strip().lower()
    if name not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {name!r}")
    native = _native_bf16(device)
    if name == "fp32":
        return None
    if name == "bf16":
        if not native:
            log.warning("bf16 on %s: not supported natively, emulated (slow); "
                        "--precision fp32 is faster here", _device_name(device))
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if native else torch.float16
    return torch.bfloat16 if native else None


def precision_name(dtype: torch.dtype | None) -> str:
    """'fp32', 'bf16' or 'fp16': how a `resolve_precision` result is written down."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def precision_autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device` (a `resolve_precision` result); a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_supports_bf16()


def _device_name(device: torch.device) -> str:
    return cpu_description() if device.type == "cpu" else str(device)


def cpu_supports_bf16() -> bool:
    """Whether the CPU has native bf16 (a flag of BF16_CPU_FLAGS in /proc/cpuinfo); False
    where there is no /proc/cpuinfo (macOS, Windows)."""
    return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)


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

    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    found = " ".join(f for f in CPU_FEATURES if f in flags)
    return f"{name}, {cores} cores" + (f", {found}" if found else "")


def cpu_has_amx() -> bool:
    """Whether the CPU has AMX bf16 tiles (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    return set(_cpuinfo().get("flags", "").split())


def _cpuinfo() -> dict[str, str]:
    """{key: value} of the first processor in CPUINFO; {} where it cannot be read."""
    info: dict[str, str] = {}
    try:
        with open(CPUINFO) as f:
            for line in f:
                key, _, value = line.partition(":")
                if not key.strip() and info:
                    break  # end of the first processor
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info
