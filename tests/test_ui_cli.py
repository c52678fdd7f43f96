"""`monolidar ui`'s fast paths: what it reads from prefect.yaml, and a one-line error for a dead server."""
from __future__ import annotations

from flows.cli import main as cli_main
from flows.ui import deployment_names, healthy, pool_name
from tests.helpers import free_port


def test_reads_pool_and_deployments_from_prefect_yaml():
    assert pool_name() == "monolidar-pool"
    assert deployment_names() == ["build-dataset", "repair-shards", "pretrain", "finetune", "evaluate", "sensor-fidelity"]


def test_a_configured_server_that_does_not_answer_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    api = f"http://127.0.0.1:{free_port()}/api"
    assert not healthy(api)
    monkeypatch.setenv("PREFECT_API_URL", api)
    assert cli_main(["ui", "--log-dir", str(tmp_path / "logs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"monolidar ui: error: PREFECT_API_URL={api} does not answer; start that server or unset it"]
