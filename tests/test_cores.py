"""featx.cores: the cores this process may use, from CPU affinity and a cgroup CPU quota (real files)."""

from __future__ import annotations

import os

import pytest

from featx.cores import cgroup_cpu_quota, usable_cores


@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "max 100000\n"}, None),  # cgroup v2 without a limit
    ({"cpu.max": "150000 100000\n"}, 1.5),  # docker run --cpus 1.5
    ({"cpu.max": "50000 100000\n"}, 0.5),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # cgroup v1 without a limit
    ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
    ({"cpu.max": "garbage\n"}, None),
    ({"cpu.max": "0 0\n"}, None),
    ({}, None),  # no cgroup file system (macOS, Windows, some sandboxes)
])
def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_usable_cores_is_at_most_the_affinity_and_the_quota():
    cores = usable_cores()
    assert 1 <= cores <= (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    quota = cgroup_cpu_quota()
    if quota is not None:
        assert cores <= max(1, -(-quota // 1))
