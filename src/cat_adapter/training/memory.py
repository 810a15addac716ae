"""Peak-memory measurement for resource profiles (the paper's Fig. 5): CUDA allocator, or the process's RSS.

On CUDA, ``max_memory_allocated`` after ``reset_peak_memory_stats``. On the CPU, the resident set's high-water
mark (VmHWM), which Linux resets when 5 is written to ``/proc/self/clear_refs``; without the reset one job's
peak would hide every later, smaller one in the same process.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak() -> None:
    """Start a new peak from the current usage."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not permitted: the peak then covers the whole process
        pass


def current_mb() -> float | None:
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**20
    return _status_mb("VmRSS")


def peak_mb() -> float | None:
    """The peak since the last ``reset_peak`` (CUDA), or since the last reset of VmHWM (CPU)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_mb("VmHWM")


def rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 1)
