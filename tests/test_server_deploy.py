"""README's manual Prefect recipe, step by step in fresh shells (no PREFECT_API_URL in the environment; it is
set once with `prefect config set`), against a real server on 127.0.0.1: deploy prefect.yaml, press "Run"
through the API, watch it complete."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from storage.store import DatasetStore
from tests.helpers import SMALL_BUILD, free_port

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]

pytestmark = pytest.mark.slow


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "prefect server exited during start-up"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"prefect server at {url} not healthy after {timeout}s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def test_deploy_and_run_build_through_the_api(tmp_path, small_images, tiny_teacher_onnx):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "MONOLIDAR_HOME": str(REPO),
        "PYOPENGL_PLATFORM": "egl",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen(
        PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env, cwd=tmp_path,
        start_new_session=True, stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT,
    )
    worker = None
    try:
        _wait_healthy(api, server)
        run = dict(env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        # Stored in the profile, so every later shell (and the worker) finds the server.
        r = subprocess.run(PREFECT + ["config", "set", f"PREFECT_API_URL={api}"], **run)
        assert r.returncode == 0, r.stdout + r.stderr
        r = subprocess.run(PREFECT + ["work-pool", "create", "monolidar-pool", "--type", "process"], **run)
        assert r.returncode == 0, r.stdout + r.stderr
        r = subprocess.run(PREFECT + ["--no-prompt", "deploy", "--all"], **run)
        assert r.returncode == 0, r.stdout + r.stderr

        deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
        by_name = {d["name"]: d for d in deployments}
        assert {"build-dataset", "repair-shards", "pretrain", "finetune", "evaluate"} <= set(by_name)
        build = by_name["build-dataset"]
        assert build["schedules"] and build["schedules"][0]["schedule"]["cron"] == "0 3 * * *"

        worker = subprocess.Popen(
            PREFECT + ["worker", "start", "--pool", "monolidar-pool", "--limit", "1"], env=env, cwd=REPO,
            start_new_session=True, stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT,
        )
        store = tmp_path / "from-ui.zarr"
        # What the UI's "Run -> Custom run" button sends: a flow run created from the deployment.
        params = {"images": str(small_images), "out": str(store), "teacher": str(tiny_teacher_onnx), **SMALL_BUILD}
        fr = httpx.post(f"{api}/deployments/{build['id']}/create_flow_run", json={"parameters": params},
                        timeout=30)
        assert fr.status_code in (200, 201), fr.text
        run_id = fr.json()["id"]
        deadline = time.monotonic() + 400
        state = None
        while time.monotonic() < deadline:
            state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()["state"]
            if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            time.sleep(2)
        assert state and state["type"] == "COMPLETED", (state, (logs / "worker.log").read_text()[-3000:])
        ds = DatasetStore.open(store)
        assert sum(r["status"] == "ok" for r in ds.manifest().to_pylist()) == 5
        artifacts = httpx.post(f"{api}/artifacts/filter", json={}, timeout=30).json()
        kinds = {a.get("type") for a in artifacts}
        assert {"table", "progress", "markdown"} <= kinds
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)
