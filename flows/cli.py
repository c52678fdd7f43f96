"""`monolidar` command line.

Each area owns its sub-commands in a small module exposing ``register(subparsers)``; the handler set
with ``parser.set_defaults(func=...)`` receives the parsed args and returns an exit code. Modules must
import heavy libraries (torch, prefect, onnxruntime) inside handlers so ``monolidar --help`` stays fast.

Handlers of commands that run Prefect flows are registered with ``runs_flows=True`` (see
``ephemeral_run_settings``).

Errors: any ``MonolidarError`` (or OSError/ValueError raised on bad input) becomes a one-line message
on stderr and exit code 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator

from tasks.errors import MonolidarError

# Sub-command modules, in the order they appear in --help.
COMMAND_MODULES = (
    "flows.cli_build",     # build, repair, preview
    "flows.cli_storage",   # inspect, export-kitti
    "flows.cli_teacher",   # teacher, teacher-export
    "flows.cli_embedded",  # train-teacher (the embedded default teacher)
    "flows.cli_train",     # pretrain, finetune, evaluate
    "flows.cli_fidelity",  # calibrate-sensor, fidelity
    "flows.cli_ui",        # ui (local Prefect server + deployments + worker)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monolidar",
        description="Make LiDAR depth-completion training data from ordinary photos, then train on it.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # an area not installed yet must not break the others
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def _quiet_prefect(debug: bool) -> None:
    """Flows run in Prefect's ephemeral mode (no server needed) unless PREFECT_API_URL points at one. The
    CLI prints its own progress, summaries and one-line errors, so Prefect's run loggers only speak with
    --debug (a filter, not a level: Prefect re-applies its logging config when the first run starts)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The ephemeral server gets 20 s to start by default; a loaded 2-core box needs longer.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    if debug:
        return
    for name in ("prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine"):
        logger = logging.getLogger(name)
        if _critical_only not in logger.filters:
            logger.addFilter(_critical_only)


def _critical_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.CRITICAL


@contextlib.contextmanager
def ephemeral_run_settings() -> Iterator[None]:
    """Prefect settings for flows run in this process's ephemeral mode (no PREFECT_API_URL): no flow heartbeats.

    Why: Prefect 3.9's flow heartbeat thread sleeps in 1 s steps and each flow run joins it when it ends,
    which cost 0.8-1.1 s per flow run here (measured on an empty flow: 1.08 s of overhead with heartbeats,
    0.2-0.4 s without) - a tenth of a small build. Heartbeats only let a server notice a crashed run that a
    worker started; an ephemeral server lives and dies with this process, so nothing is lost. Flows run
    against a real server (PREFECT_API_URL, `monolidar ui`, deployments) keep Prefect's setting.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    _quiet_prefect(args.debug)
    try:
        # Only around commands that run flows: importing Prefect's settings costs ~1.4 s, which `inspect` and
        # `export-kitti` (no flow) must not pay.
        with ephemeral_run_settings() if getattr(args, "runs_flows", False) else contextlib.nullcontext():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("monolidar: interrupted", file=sys.stderr)
        return 130
    except (MonolidarError, FileNotFoundError, NotADirectoryError, ValueError) as exc:
        if args.debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"monolidar {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
