"""Shared fixtures. Tests may read ../shared/data; tests that need it skip with a reason when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

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
