"""Fault tests: SIGKILL of the build process in the middle of a shard write, then repair."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import numpy as np

from flows.build import repair_dataset
from storage.store import LOCK_NAME, DatasetStore
from tests.helpers import SMALL, arrays_of, run_build, shard_bytes

# Runs the real build (default runner: shards are written by the spawned simulation processes) in a child
# process; when shard 1's arrays are written and its manifest part (the commit marker) is about to be
# published, it signals the test and hangs, so the kill lands mid-shard. The hook sits at module level of a
# script file, so spawn runs it in every simulation worker too (as __mp_main__).
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import storage.manifest as mf

    ready, images, out, teacher = sys.argv[1:5]
    publish = mf.write_part

    def hang_on_shard_1(path, table):
        if Path(path).name == mf.part_name(1):
            Path(ready).write_text("arrays of shard 1 written")
            time.sleep(600)
        publish(path, table)

    mf.write_part = hang_on_shard_1

    if __name__ == "__main__":
        from flows.build import build_dataset
        build_dataset(images=images, out=out, teacher=teacher, sim_workers=2, **{SMALL!r})
    """
).replace("{SMALL!r}", repr(SMALL))


@pytest.mark.slow  # > 10 s on this box; .ci/run runs it
def test_kill9_mid_shard_write_then_repair(prefect_harness, small_images, tiny_teacher_onnx, tmp_path):
    store = tmp_path / "killed.zarr"
    ready = tmp_path / "ready"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": "",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = tmp_path / "child_build.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), str(ready), str(small_images), str(store), str(tiny_teacher_onnx)],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert child.poll() is None, f"build exited early: {child.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "build never reached shard 1"
            time.sleep(0.2)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)  # the build and everything it started
        child.wait(timeout=60)

    # The store is readable; shard 1 (arrays written, never committed) is absent, not half-present.
    ds = DatasetStore.open(store)
    assert 1 not in ds.complete_shards()
    assert all(r["shard"] != 1 for r in ds.manifest().to_pylist())
    assert (store / LOCK_NAME).exists()  # left behind by the killed build

    res = repair_dataset(store=str(store))  # takes over the dead process's lock
    assert 1 in res["repaired_shards"] and res["status"] == {"ok": 5, "quarantined": 0, "failed": 0}

    # No lost sample and no corrupt shard: identical to an uninterrupted build of the same inputs.
    clean = tmp_path / "clean.zarr"
    run_build(small_images, clean, tiny_teacher_onnx)
    assert shard_bytes(store) == shard_bytes(clean)
    a, b = arrays_of(store), arrays_of(clean)
    assert a.keys() == b.keys() and all(np.array_equal(a[i]["sparse"], b[i]["sparse"]) for i in a)
