"""What this machine's processor is and computes natively, read without torch (the default model depends on it)."""

from __future__ import annotations

import os
import platform

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in /proc/cpuinfo (Linux), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def bf16_cpu() -> bool:
    """The CPU multiplies bf16 itself (AVX512-BF16 or AMX), by its flags."""
    return bool(cpu_flags() & set(NATIVE_BF16_FLAGS))


def nvidia_gpu() -> bool:
    """An NVIDIA GPU with its driver loaded (what CUDA needs), seen without importing torch."""
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False
