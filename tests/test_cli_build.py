"""`monolidar build / repair / preview` through the real CLI entry point."""
from __future__ import annotations

import json

import pytest

from flows.cli import main as cli_main
from model.teacher import DEFAULT_TEACHER


@pytest.mark.slow  # > 10 s on this box; .ci/run runs it
def test_build_without_arguments_makes_the_demo_dataset(prefect_harness, tmp_path, monkeypatch, capsys):
    """The README's first command: shipped images, embedded teacher, KITTI-sized canvas."""
    if not DEFAULT_TEACHER.is_file():
        pytest.fail(f"the embedded teacher {DEFAULT_TEACHER} is not shipped")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["build", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "monolidar-demo/demo.zarr" in out and "monolidar inspect" in out
    assert cli_main(["inspect", "monolidar-demo/demo.zarr", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["samples"] == 8 and info["status"]["ok"] == 8
    # KITTI's velodyne_raw covers ~5-6 % of the 1216x352 crop; photos of any scene land near it.
    assert 0.02 < info["lidar_density_mean"] < 0.12
    assert info["sensor"] == "hdl64e_kitti"
    assert cli_main(["preview", "monolidar-demo/demo.zarr", "--out", "previews", "--limit", "2"]) == 0
    assert len(list((tmp_path / "previews").glob("*.png"))) == 2
    # A complete store: repair has nothing to do.
    assert cli_main(["repair", "monolidar-demo/demo.zarr", "--quiet"]) == 0
    assert "nothing to repair" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, needle",
    [
        (["build", "--images", "/nonexistent/photos"], "/nonexistent/photos"),
        (["build", "--images", "{imgs}", "--sensor", "hdl65"], "hdl64e_kitti"),  # lists the known profiles
        (["build", "--images", "{imgs}", "--teacher", "{tmp}/missing.onnx"], "missing.onnx"),
        (["repair", "{tmp}/no-store"], "no-store"),
        (["preview", "{imgs}", "--out", "{tmp}/p"], "not a monolidar store"),
    ],
)
def test_bad_input_exits_2_with_a_one_line_reason(prefect_harness, small_images, tmp_path, capsys, args, needle):
    args = [a.replace("{imgs}", str(small_images)).replace("{tmp}", str(tmp_path)) for a in args]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_build_defaults_have_one_source_and_typed_choices():
    """BuildConfig/RunDefaults are the defaults of the flow signature (the Prefect UI form) and of the CLI;
    sensor and backend are enums in the form, so the UI shows dropdowns."""
    import argparse

    from prefect.utilities.callables import parameter_schema

    from flows.build import build_dataset
    from flows.cli_build import register
    from tasks.build_config import BACKENDS, BUILD_DEFAULTS, RUN_DEFAULTS
    from tasks.sensors import list_profiles

    props = parameter_schema(build_dataset).model_dump_for_openapi()["properties"]
    assert props["sensor"]["enum"] == list_profiles() and props["backend"]["enum"] == list(BACKENDS)
    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    cli = vars(sub.choices["build"].parse_args([]))
    for name in ("height", "width", "fx", "sensor", "backend", "samples_per_image", "shard_size", "seed"):
        assert props[name].get("default") == getattr(BUILD_DEFAULTS, name) == cli[name], name
    for name in ("teacher_batch_size", "previews", "sim_workers"):
        assert props[name].get("default") == getattr(RUN_DEFAULTS, name) == cli[name], name
    assert BUILD_DEFAULTS.shard_size >= 64  # shards of tens of MB at the KITTI canvas


def test_cli_sensor_file_goes_to_the_flow_as_sensor_file():
    from flows.cli_build import split_sensor

    assert split_sensor("vlp16") == ("vlp16", None)
    assert split_sensor("/profiles/my_lidar.yaml") == ("hdl64e_kitti", "/profiles/my_lidar.yaml")


def test_flow_commands_run_without_heartbeats_only_in_ephemeral_mode():
    """Commands that run flows skip Prefect's flow heartbeat when no server is configured (its thread is joined
    at every flow's end, ~1 s); against a server (PREFECT_API_URL) Prefect's own setting stays."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, \
        temporary_settings

    from flows.cli import build_parser, ephemeral_run_settings

    parser = build_parser()
    for argv in (["build"], ["repair", "x.zarr"], ["pretrain", "--store", "s.zarr", "--out", "o"],
                 ["evaluate", "--kitti", "k", "--baseline", "ipbasic"], ["train-teacher"]):
        assert parser.parse_args(argv).runs_flows is True, argv
    for argv in (["inspect", "x.zarr"], ["export-kitti", "x.zarr", "out"]):
        assert not getattr(parser.parse_args(argv), "runs_flows", False), argv

    with temporary_settings(updates={PREFECT_API_URL: None, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}):
        with ephemeral_run_settings():
            assert get_current_settings().flows.heartbeat_frequency is None
        assert get_current_settings().flows.heartbeat_frequency == 180
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api",
                                     PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}):
        with ephemeral_run_settings():
            assert get_current_settings().flows.heartbeat_frequency == 180
