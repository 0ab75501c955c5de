"""How many cores this process may keep busy: one answer for inference threads, decoding, fits and Ray.

A machine's core count overstates it twice over: CPU affinity (taskset, a container's cpuset) limits
the cores a process may run on, and a cgroup CPU quota (`docker run --cpus 2`, a Kubernetes limit)
limits how much of them it may use. Threads beyond the quota do not run faster, they queue; spinning
thread pools (XNNPACK, OpenBLAS) then waste the quota they have. So featx sizes every pool by both.

Plain file reads, no imports beyond the standard library: a LiteRT run asks this before anything else.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

__all__ = ["usable_cores"]

_CGROUP = Path("/sys/fs/cgroup")


@functools.lru_cache(maxsize=1)
def usable_cores() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup CPU quota where one is set (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # macOS, Windows: no affinity call
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def cgroup_cpu_quota(root: Path = _CGROUP) -> float | None:
    """CPUs' worth of time the cgroup quota allows (e.g. 1.5), or None when there is no quota (or no cgroup).

    cgroup v2: `cpu.max` holds "QUOTA PERIOD" or "max PERIOD"; v1: `cpu/cpu.cfs_quota_us` (-1 = none) and
    `cpu/cpu.cfs_period_us`. Both are what this process's own cgroup shows at the usual mount point.
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else _ratio(quota, period)
    except (OSError, ValueError):
        pass
    try:
        quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
        period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return None if quota.startswith("-") else _ratio(quota, period)
    except (OSError, ValueError):
        return None


def _ratio(quota: str, period: str) -> float | None:
    quota_value, period_value = int(quota), int(period)
    return quota_value / period_value if quota_value > 0 and period_value > 0 else None
