"""Helpers shared by test modules (import them from here, never from another test module)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

# A build small enough for a server test: five 320-px photos on a 96x320 canvas, three shards.
SMALL_BUILD = dict(height=96, width=320, shard_size=2, previews=1)
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_deployment(api: str, name: str, parameters: dict) -> str:
    """Create a flow run of deployment ``name`` the way the UI's "Run -> Custom run" form does; its id."""
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    dep = next(d for d in deployments if d["name"] == name)
    r = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}, timeout=30)
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


def wait_for_flow_run(api: str, run_id: str, timeout: float = 400) -> dict:
    """Poll until the flow run reaches a terminal state; returns that state (dict from the API)."""
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()["state"] or {}
        if state.get("type") in TERMINAL:
            return state
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} not finished after {timeout}s: {state}")


def flow_run_logs(api: str, run_id: str, timeout: float = 60) -> list[str]:
    """The run's log messages, once its last one ("Finished in state …") has reached the server (logs are
    shipped in batches, after the state change)."""
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
    deadline = time.monotonic() + timeout
    while True:
        messages = [log["message"] for log in httpx.post(f"{api}/logs/filter", json=body, timeout=30).json()]
        if any(m.startswith("Finished in state") for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(1)


def ui_env(tmp_path: Path) -> dict[str, str]:
    """A fresh user's environment: no PREFECT_* settings from this session, a private Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


class UICommand:
    """`monolidar ui` in a subprocess; reads its stdout until the UI URL is printed."""

    def __init__(self, tmp_path: Path, port: int, *extra: str) -> None:
        self.out = tmp_path / "ui.out"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "ui", "--port", str(port), "--log-dir", str(tmp_path / "logs"),
             *extra],
            env=ui_env(tmp_path), cwd=tmp_path, stdout=open(self.out, "w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.out.read_text()

    def wait_for(self, pattern: str, timeout: float = 400) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text())
            if m:
                return m
            assert self.proc.poll() is None, f"monolidar ui exited early:\n{self.text()}"
            time.sleep(0.5)
        raise AssertionError(f"{pattern!r} not printed after {timeout}s:\n{self.text()}")

    def interrupt(self, timeout: float = 120) -> int:
        """Ctrl-C as a terminal sends it (SIGINT to the foreground process)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def pids_started(text: str) -> list[int]:
    return [int(p) for p in re.findall(r"\(pid (\d+)", text)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
