"""The machine a figure was measured on: the CPU's model line, the flags that decide the fast path, the load."""

from __future__ import annotations

import os
import subprocess

FLAGS_THAT_MATTER = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU (no lscpu)"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown CPU")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_summary() -> str:
    flags = cpu_flags()
    shown = " ".join(f"{flag}{'+' if flag in flags else '-'}" for flag in FLAGS_THAT_MATTER)
    return (f"CPU: {cpu_model()}, {os.cpu_count()} cores; flags: {shown}; "
            f"1-min load average {os.getloadavg()[0]:.2f}")
