"""Shared fixtures. Tests may read ../shared/data; tests that need it skip with a reason when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")  # subprocess builds on a busy box

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kitti_gt_dir(shared_data: Path) -> Path:
    return shared_data / "kitti_gt"


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect database + ephemeral API for the whole session (real flow runs)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_teacher_onnx(tmp_path_factory) -> Path:
    """A small real ONNX depth model (torch -> ONNX) whose disparity grows toward the bottom of the image
    like a ground plane, modulated by the image so outputs differ per input. Runs in milliseconds."""
    from model.export import export_ground_plane_teacher

    return export_ground_plane_teacher(tmp_path_factory.mktemp("teacher") / "tiny_teacher.onnx")


@pytest.fixture(scope="session")
def small_images(tmp_path_factory) -> Path:
    """Five real photos (the demo inputs) downsized to 320 px wide, in a fresh folder."""
    from PIL import Image

    src = REPO / "flows" / "demo_images"
    out = tmp_path_factory.mktemp("images")
    for p in sorted(src.glob("*.jpg"))[:5]:
        im = Image.open(p).convert("RGB")
        im = im.resize((320, round(im.height * 320 / im.width)))
        im.save(out / p.name, quality=90)
    return out
