"""How much memory a trainer may plan for: what is free on its device, or less where the operator says so.

The planner (`memory_plan.py`) decides the micro-batch and gradient checkpointing against this figure before the
model is loaded. On CUDA it is the driver's free count (the CUDA context already taken); on a CPU the kernel's
`MemAvailable` (free memory plus the page cache it can drop, which is where a model's mmapped weight files sit).
`OPENFT_TRAIN_MEMORY_GB` caps it: several jobs sharing one GPU, or a test that needs a job not to fit.
Imports torch only to ask CUDA, so the data check can call `available_ram` without it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MEMORY_ENV = "OPENFT_TRAIN_MEMORY_GB"
"""GiB one trainer may plan to use at most (a float); unset: whatever is free on its device when it starts."""


def available_ram() -> int | None:
    """Bytes of RAM available to a new allocation (`MemAvailable`; else free pages); None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def free_memory(device: torch.device) -> int | None:
    """Bytes free on `device` now (CUDA: the driver's count; CPU: `available_ram`); None when unknown."""
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return available_ram()


class BadMemoryCap(ValueError):
    pass


def operator_cap() -> int | None:
    """`OPENFT_TRAIN_MEMORY_GB` in bytes, or None when unset (BadMemoryCap when it is not a positive number)."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise BadMemoryCap(f"{MEMORY_ENV} must be a positive number of GiB, got {raw!r}")
    return int(value * (1 << 30))


def memory_budget(device: torch.device) -> int | None:
    """What a trainer on `device` plans for: the free memory, at most the operator's cap (None: unknown)."""
    free, cap = free_memory(device), operator_cap()
    if cap is None:
        return free
    return cap if free is None else min(free, cap)
