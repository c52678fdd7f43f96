"""A process pool for the CPU side of the build (simulate, encode, write), beside the teacher.

Why processes: the per-sample work is a mix of Python, numpy, Numba and codec calls; in threads of one
process it contends for the GIL with the teacher thread's pre/post-processing, and a 2-thread build used
123 % of 200 %. Why ``spawn``: forking a process that holds an onnxruntime session, Prefect's event loop
threads and OpenMP pools is unsafe. Why a lower CPU priority: the teacher is the stage a build is sized around
(on a GPU box it is the expensive resource), so simulation fills the time the teacher leaves idle instead of
making its threads wait. Workers run under Linux's ``SCHED_IDLE`` policy (nice 10 where it is not available):
a niced worker still keeps a core until the scheduler's next tick when a teacher thread wakes, and every
parallel region of a CPU teacher then waits for its slowest thread; a ``SCHED_IDLE`` worker yields at once.
Measured on the 2-core box, 192 photos, short-side-126 DA-V2-S-shaped teacher, shards of 16, four alternating
pairs of CLI builds: shard phase 29.9 s against 32.4 s with nice 10 (medians; faster in each of the 4 pairs).

The pool is created on first use and reused by later builds in the same process (workers keep their
imports and Numba code warm); it is shut down when the process exits. Workers copy the environment when they
start, so a pool whose creator's environment has changed since (object-store credentials and endpoint,
thread settings) is replaced: a worker must never write with a configuration its caller no longer has. Work functions are plain module-level
functions; their results must pickle and be small.
"""
from __future__ import annotations

import atexit
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

# CPU priority of simulation workers relative to the flow process where SCHED_IDLE is not available (0..19;
# higher = yields more); 0 = no lowering at all (SCHED_IDLE neither).
SIM_NICE = 10

_LOCK = threading.Lock()
_POOL: ProcessPoolExecutor | None = None
_POOL_KEY: tuple | None = None


def default_workers() -> int:
    """One simulation process per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def lower_priority(nice: int) -> None:
    """Lower the calling thread's CPU priority (Linux keeps both per thread; threads it starts later inherit it):
    ``SCHED_IDLE`` (runs only when a core would otherwise idle) where the OS has it, else ``nice``; ``nice`` == 0
    leaves it as it is."""
    if not nice:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # lowering is always permitted on Linux
        return
    except (AttributeError, OSError):  # not Linux, or a sandbox that refuses it
        pass
    try:
        os.nice(nice)
    except OSError:  # not permitted here: run at normal priority
        pass


def _init_worker(nice: int) -> None:
    lower_priority(nice)
    # One thread per worker: the pool is the parallelism; nested thread pools would oversubscribe the cores.
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def _environment_fingerprint() -> str:
    """A digest of this process's environment variables (what spawned workers inherit)."""
    import hashlib

    return hashlib.sha256(repr(sorted(os.environ.items())).encode()).hexdigest()


def get_pool(workers: int, *, nice: int = SIM_NICE) -> ProcessPoolExecutor:
    """The process-wide simulation pool with ``workers`` processes (replaced if the size changes)."""
    global _POOL, _POOL_KEY
    key = (int(workers), int(nice), _environment_fingerprint())
    with _LOCK:
        if _POOL is not None and _POOL_KEY != key:
            _POOL.shutdown(wait=True)
            _POOL = None
        if _POOL is None:
            _POOL = ProcessPoolExecutor(max_workers=key[0], mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker, initargs=(key[1],))
            _POOL_KEY = key
        return _POOL


def run_in_pool(workers: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in the simulation pool (``workers`` > 0) or here (0) and return its result.
    Exceptions raised by ``fn`` propagate unchanged (they pickle: MonolidarError subclasses do)."""
    if workers <= 0:  # here, beside other shard tasks in threads: they are the parallelism, as workers are
        from tasks.images import opencv_single_threaded

        with opencv_single_threaded():
            return fn(*args, **kwargs)
    fut: Future = get_pool(workers).submit(fn, *args, **kwargs)
    try:
        return fut.result()
    except BrokenProcessPool:
        # A worker died (killed, out of memory): drop the pool so a retry of the task gets a fresh one.
        shutdown()
        raise


def shutdown() -> None:
    global _POOL, _POOL_KEY
    with _LOCK:
        if _POOL is not None:
            _POOL.shutdown(wait=True, cancel_futures=True)
        _POOL, _POOL_KEY = None, None


atexit.register(shutdown)
