"""The machine a measurement ran on, recorded beside benchmark rows, eval results and reports."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine(threads: int | None = None) -> dict[str, object]:
    """CPU, cores (all and usable by this process), torch / transformers versions, torch threads
    (``threads`` when given, else torch's current count) and the CUDA device name (None without one)."""
    import torch

    try:
        transformers = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        transformers = "-"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_name(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "transformers": transformers,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def machine_text(info: dict[str, object] | None = None) -> str:
    """One line: ``AMD EPYC, 2 cores, torch 2.13.0+cpu, 2 threads[, GPU NAME]``."""
    m = info if info is not None else machine()
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return f"{m['cpu']}, {m['logical_cores']} cores, torch {m['torch']}, {m['threads']} threads{gpu}"
