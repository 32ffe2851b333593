"""The machine a figure was measured on: the CPU's model line, the flags that decide the fast path, the load."""

from __future__ import annotations

import os

from encoders.machine import cpu_flags, cpu_model

FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_summary() -> str:
    flags = cpu_flags()
    shown = " ".join(f"{flag}{'+' if flag in flags else '-'}" for flag in FLAGS_THAT_MATTER)
    return (f"CPU: {cpu_model()}, {os.cpu_count()} cores; flags: {shown}; "
            f"1-min load average {os.getloadavg()[0]:.2f}")
