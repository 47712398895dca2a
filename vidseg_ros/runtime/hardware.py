"""What a compiled or optimised model is valid on: the CPU (model and vector extensions) or the GPU.

ONNX Runtime's session cache keys on these, and ``vidseg bench`` records the CPU with its figures, because the
ratios between backends and methods move from one CPU to another.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

#: Instruction-set flags that decide which MLAS kernels and NCHWc block size an optimised CPU graph uses.
ISA_FLAGS = frozenset(
    {"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"}
    | {"avx_vnni", "amx_tile", "amx_bf16", "asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16"}
)


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and feature flags (Linux; elsewhere an empty name and no flags)."""
    name, flags = "", frozenset()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            field, _, value = (part.strip() for part in line.partition(":"))
            if field in ("model name", "Model", "Hardware") and not name:
                name = value
            elif field in ("flags", "Features") and not flags:
                flags = frozenset(value.split())
    except OSError:  # not Linux: the processor string is the best there is
        pass
    return name, flags


def cpu_identity() -> str:
    """The CPU an optimised graph is valid on: architecture, model name and the vector extensions it has."""
    name, flags = cpu_info()
    isa = ",".join(sorted(flags & ISA_FLAGS))
    return f"{platform.machine()} {name or platform.processor() or 'unknown'} [{isa}]"


def gpu_identity(device: torch.device) -> str:
    """The GPU an engine or provider-compiled graph is valid on: its name and compute capability."""
    index = device.index or 0
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} sm{major}.{minor}"
