"""`monolidar ui` end to end: the real command on a free port with its own Prefect home; a build started
through the API exactly as the UI's Run button does; a bad-parameter run that reads clearly; a second
`monolidar ui` reuses the running server; Ctrl-C stops everything each one started, and only that."""
from __future__ import annotations

import re

import pytest

from storage.store import DatasetStore
from tests.helpers import (SMALL_BUILD, UICommand, alive, flow_run_logs, free_port, pids_started, port_open,
                           run_deployment, wait_for_flow_run)

pytestmark = pytest.mark.slow


def test_ui_runs_a_build_from_the_deployment_and_stops_cleanly(tmp_path, small_images, tiny_teacher_onnx):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    ui = UICommand(tmp_path, port, "--worker-limit", "1")
    try:
        ui.wait_for(rf"Prefect UI: http://127\.0\.0\.1:{port}\b")
        assert re.search(r"deploying build-dataset, repair-shards, pretrain, finetune, evaluate", ui.text())
        pids = pids_started(ui.text())
        assert len(pids) == 2 and all(alive(p) for p in pids), ui.text()

        store = tmp_path / "from-ui.zarr"
        params = {"images": str(small_images), "out": str(store), "teacher": str(tiny_teacher_onnx), **SMALL_BUILD}
        good = run_deployment(api, "build-dataset", params)
        # A wrong folder: Failed with the one-line reason, no traceback in the run's logs.
        bad = run_deployment(api, "build-dataset", {**params, "images": str(tmp_path / "no-such-photos")})

        state = wait_for_flow_run(api, good)
        assert state["type"] == "COMPLETED", (state, (tmp_path / "logs" / "worker.log").read_text()[-3000:])
        rows = DatasetStore.open(store).manifest().to_pylist()
        assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)

        state = wait_for_flow_run(api, bad)
        reason = f"InputError: {tmp_path / 'no-such-photos'}: input folder does not exist"
        assert state["type"] == "FAILED" and state["message"] == reason, state
        logs = flow_run_logs(api, bad)
        assert not [m for m in logs if "Traceback" in m], logs
        assert [m for m in logs if "input folder does not exist" in m] == [f"Finished in state Failed('{reason}')"]

        # A second `monolidar ui` finds this server: it starts only a worker, and Ctrl-C stops only that.
        (tmp_path / "second").mkdir()
        second = UICommand(tmp_path / "second", port)
        try:
            second.wait_for(r"Prefect UI: ")
            assert f"using the Prefect server already running at {api}" in second.text()
            assert len(pids_started(second.text())) == 1, second.text()
        finally:
            assert second.interrupt() == 0, second.text()
            second.kill()
        assert "stopping the server" not in second.text() and port_open(port)
    finally:
        rc = ui.interrupt()
        ui.kill()
    assert rc == 0, ui.text()
    assert "stopping the worker" in ui.text() and "stopping the server" in ui.text()
    assert not any(alive(p) for p in pids) and not port_open(port)
