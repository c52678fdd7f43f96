"""The architecture as a test: import-linter contracts in pyproject.toml ([tool.importlinter]) fix the
dependency direction flows -> tasks -> model | storage -> shared core, and which package alone may import
zarr/pyarrow, torch and prefect."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "model", "storage")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the packages under ``root`` with the config in ``root/pyproject.toml``."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


def test_import_contracts_are_kept():
    r = lint_imports(REPO)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_contracts_catch_an_upward_import(tmp_path):
    """Not vacuous: the same contracts break on a copy of the sources where model/ imports flows/."""
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("*.onnx", "*.jpg", "*.png",
                                                                                  "__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "model" / "metrics.py", "a") as f:
        f.write("\nfrom flows.build import DEFAULT_OUT  # noqa: E402 - the injected violation\n")
    r = lint_imports(tmp_path)
    assert r.returncode != 0
    assert "model is not allowed to import flows" in r.stdout, r.stdout[-3000:]
