"""Cores, BLAS threads and parallel fits: never more busy threads than cores.

The BLAS thread limit in force is the budget: `fit_head` sets it to the cores it may use, a user may
set it with threadpoolctl, and OpenBLAS starts at the machine's cores. Parallel fits share it out, so
parallel fits x BLAS threads per fit never exceed it. Oversubscribed OpenBLAS threads spin on a busy
machine: a logistic regression that took 10 s alone took 150 s beside another busy process.
"""

from __future__ import annotations

import joblib
from threadpoolctl import threadpool_info, threadpool_limits

from featx.cores import usable_cores


def cores(n_jobs=None) -> int:
    """Cores to use: all for None, n_jobs if positive, all but |n_jobs| - 1 if negative (joblib's rule)."""
    available = usable_cores()  # follows CPU affinity and cgroup quotas, unlike os.cpu_count
    if n_jobs is None:
        return available
    n_jobs = int(n_jobs)
    if n_jobs == 0:
        raise ValueError("n_jobs must not be 0; use None for all cores or a positive number.")
    return max(1, min(available, n_jobs if n_jobs > 0 else available + 1 + n_jobs))


def blas_threads() -> int:
    """The BLAS thread limit in force (the largest over loaded BLAS libraries; 1 when none is loaded)."""
    return max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=1)


def within_cores(n_jobs=None):
    """A context in which BLAS uses at most `cores(n_jobs)` threads (never raising a lower limit)."""
    return threadpool_limits(limits=min(cores(n_jobs), blas_threads()), user_api="blas")


def parallel_map(function, items, n_jobs=None) -> list:
    """[function(item) for item in items], on up to `n_jobs` threads within the BLAS thread budget.

    Threads, not processes: the work is BLAS and numpy, which release the GIL, and threads share X
    without copying it. Results come back in the order of `items`, whatever finishes first.
    """
    items = list(items)
    budget = blas_threads()
    workers = min(cores(n_jobs), budget, len(items))
    if workers <= 1:
        return [function(item) for item in items]
    per_worker = max(1, budget // workers)

    def limited(item):
        # Set again in the worker: an OpenMP build of OpenBLAS (faiss ships one) keeps a thread count
        # per thread, so the process-wide limit below does not reach it there.
        with threadpool_limits(limits=per_worker, user_api="blas"):
            return function(item)

    # One process-wide limit serves the pthreads builds in every thread: budget // workers each.
    with threadpool_limits(limits=per_worker, user_api="blas"):
        # Threads unless a joblib backend is configured around the call (featx.engines.ray.joblib_on_ray).
        return joblib.Parallel(n_jobs=workers, prefer="threads")(joblib.delayed(limited)(item) for item in items)
