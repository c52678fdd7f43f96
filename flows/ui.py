"""The local Prefect UI in one command: server, work pool, deployments, worker.

``serve_ui`` brings up what `README.md` used to ask for in four terminals: a Prefect server on
127.0.0.1 (or the one already answering there / at ``PREFECT_API_URL``), the process work pool named in
``prefect.yaml``, every deployment of ``prefect.yaml``, and a worker on that pool. It prints the UI URL
and waits; Ctrl-C (or SIGTERM) stops the worker and the server it started, and nothing else.

Children run in their own sessions so the terminal's Ctrl-C reaches only this process, which then stops
them in order (worker first, so no run is picked up by a worker whose server is gone).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from tasks.errors import MonolidarError

REPO = Path(__file__).resolve().parent.parent
PREFECT_YAML = REPO / "prefect.yaml"
PREFECT = [sys.executable, "-m", "prefect"]


class UIError(MonolidarError):
    """The local Prefect stack could not be brought up (message says which step and why)."""


@dataclass
class Stack:
    """What ``serve_ui`` runs; ``started`` lists only the processes it started (those it must stop)."""

    api_url: str
    ui_url: str
    pool: str
    deployments: list[str]
    started: dict[str, subprocess.Popen] = field(default_factory=dict)


def pool_name(prefect_yaml: Path = PREFECT_YAML) -> str:
    """The work pool of the deployments in prefect.yaml (one source of truth for its name)."""
    spec = yaml.safe_load(prefect_yaml.read_text())
    pools = {d.get("work_pool", {}).get("name") for d in spec.get("deployments", [])} - {None}
    if len(pools) != 1:
        raise UIError(f"{prefect_yaml}: expected every deployment on one work pool, found {sorted(pools)}")
    return pools.pop()


def deployment_names(prefect_yaml: Path = PREFECT_YAML) -> list[str]:
    return [d["name"] for d in yaml.safe_load(prefect_yaml.read_text()).get("deployments", [])]


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def child_env(api_url: str) -> dict[str, str]:
    """Environment for the prefect commands: this API, this checkout as the deployments' working
    directory, and INFO logs so flow-run logs reach the UI (the CLI itself runs Prefect at WARNING)."""
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=api_url,
        MONOLIDAR_HOME=str(REPO),
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_SERVER_ANALYTICS_ENABLED=env.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        PYOPENGL_PLATFORM=env.get("PYOPENGL_PLATFORM", "egl"),
    )
    return env


def _start(args: list[str], env: dict[str, str], log: Path | None) -> subprocess.Popen:
    out = open(log, "a") if log else None  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(PREFECT + args, env=env, cwd=REPO, start_new_session=True,
                            stdout=out, stderr=subprocess.STDOUT if out else None)


def _wait_healthy(api_url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise UIError(f"prefect server exited with code {proc.returncode} during start-up"
                          + (f": {tail[0]}" if tail else "") + f" (log: {log})")
        if healthy(api_url):
            return
        time.sleep(0.5)
    raise UIError(f"prefect server at {api_url} not healthy after {timeout:.0f} s (log: {log})")


def _run(args: list[str], env: dict[str, str], what: str) -> None:
    r = subprocess.run(PREFECT + args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr + r.stdout).strip().splitlines() if ln.strip()]
        raise UIError(f"{what} failed (exit {r.returncode}): {lines[-1] if lines else 'no output'}")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGINT the child's process group (Prefect's graceful path), then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def stop_all(stack: Stack, say: Callable[[str], None] = print) -> None:
    for name in ("worker", "server"):
        proc = stack.started.pop(name, None)
        if proc is not None:
            say(f"stopping the {name} (pid {proc.pid})")
            stop(proc)


def bring_up(*, host: str = "127.0.0.1", port: int = 4200, log_dir: Path | None = None,
             worker_limit: int | None = None, startup_timeout: float = 180,
             say: Callable[[str], None] = print) -> Stack:
    """Start (or reuse) the server, create the pool, deploy everything, start a worker. On any failure,
    stops what it started before raising."""
    if not PREFECT_YAML.is_file():
        raise UIError(f"{PREFECT_YAML}: not found; run `monolidar ui` from a clone of the repository")
    log_dir = Path(log_dir or REPO / ".monolidar-ui")
    log_dir.mkdir(parents=True, exist_ok=True)
    configured = os.environ.get("PREFECT_API_URL")
    api_url = (configured or f"http://{host}:{port}/api").rstrip("/")
    stack = Stack(api_url=api_url, ui_url=api_url.removesuffix("/api"), pool=pool_name(),
                  deployments=deployment_names())
    env = child_env(api_url)
    try:
        if healthy(api_url):
            say(f"using the Prefect server already running at {api_url}")
        elif configured:
            raise UIError(f"PREFECT_API_URL={configured} does not answer; start that server or unset it")
        else:
            server = _start(["server", "start", "--host", host, "--port", str(port)], env, log_dir / "server.log")
            stack.started["server"] = server
            say(f"starting a Prefect server on {host}:{port} (pid {server.pid}, log: {log_dir / 'server.log'})")
            _wait_healthy(api_url, server, log_dir / "server.log", startup_timeout)
        if httpx.get(f"{api_url}/work_pools/{stack.pool}", timeout=30).status_code == 404:
            say(f"creating the process work pool {stack.pool}")
            _run(["work-pool", "create", stack.pool, "--type", "process"], env, "creating the work pool")
        say(f"deploying {', '.join(stack.deployments)} from {PREFECT_YAML.name}")
        _run(["--no-prompt", "deploy", "--all"], env, "prefect deploy --all")
        worker_args = ["worker", "start", "--pool", stack.pool]
        if worker_limit:
            worker_args += ["--limit", str(worker_limit)]
        stack.started["worker"] = worker = _start(worker_args, env, log_dir / "worker.log")
        say(f"started a worker on {stack.pool} (pid {worker.pid}, log: {log_dir / 'worker.log'})")
    except BaseException:
        stop_all(stack, say)
        raise
    return stack


def serve_ui(**kwargs) -> int:
    """`monolidar ui`: bring the stack up, print the URL, wait for Ctrl-C / SIGTERM, stop what it started."""
    say = kwargs.pop("say", print)
    # Install both handlers explicitly: a process started in the background by a non-interactive shell
    # inherits SIGINT ignored, and Ctrl-C / `kill -INT` must still stop the stack.
    previous = {sig: signal.signal(sig, _raise_keyboard_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    stack = None
    try:
        stack = bring_up(say=say, **kwargs)
        say(f"Prefect UI: {stack.ui_url}  (deployments: {stack.ui_url}/deployments)")
        say(f"in another shell: export PREFECT_API_URL={stack.api_url}   # then prefect/monolidar commands use it")
        say("press Ctrl-C to stop" + (" the worker and the server" if "server" in stack.started else " the worker"))
        while True:
            for name, proc in stack.started.items():
                if proc.poll() is not None:
                    raise UIError(f"the {name} exited unexpectedly with code {proc.returncode}; "
                                  f"see its log in {kwargs.get('log_dir') or REPO / '.monolidar-ui'}")
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        if stack is not None:
            stop_all(stack, say)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_keyboard_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt
