"""The simulation pool (tasks.sim_pool): spawned workers run with their caller's current environment."""
from __future__ import annotations

import os

from tasks import sim_pool


def _env(name: str) -> str | None:
    return os.environ.get(name)


def test_pool_is_replaced_when_the_environment_changes(monkeypatch):
    # A pool spawned before e.g. object-store credentials were set must not keep serving: its workers copied
    # the old environment at start and would write with it (or fail) while the caller has the new one.
    name = "MONOLIDAR_TEST_POOL_ENV"
    monkeypatch.delenv(name, raising=False)
    try:
        assert sim_pool.run_in_pool(1, _env, name) is None
        first = sim_pool.get_pool(1)
        assert sim_pool.get_pool(1) is first  # unchanged environment: the warm pool is reused
        monkeypatch.setenv(name, "endpoint-b")
        assert sim_pool.run_in_pool(1, _env, name) == "endpoint-b"
        assert sim_pool.get_pool(1) is not first
    finally:
        sim_pool.shutdown()


def _policy() -> int:
    return os.sched_getscheduler(0)


def test_workers_run_only_when_a_core_would_idle():
    """Simulation workers take the CPU only when the teacher leaves it idle: SCHED_IDLE on Linux."""
    try:
        assert sim_pool.run_in_pool(1, _policy) == os.SCHED_IDLE
        assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller (the teacher's process) is untouched
    finally:
        sim_pool.shutdown()
