"""`monolidar ui`: a local Prefect server, work pool, deployments and worker in one command."""
from __future__ import annotations

import argparse


def cmd_ui(args: argparse.Namespace) -> int:
    from flows.ui import serve_ui

    return serve_ui(host=args.host, port=args.port, log_dir=args.log_dir, worker_limit=args.worker_limit,
                    say=lambda msg: print(msg, flush=True))


def register(sub) -> None:
    p = sub.add_parser(
        "ui", help="start the Prefect UI with every monolidar deployment and a worker (Ctrl-C stops it)",
        description="Start a local Prefect server (or use the one already answering at --host/--port or at "
                    "PREFECT_API_URL), create the process work pool, deploy every deployment of prefect.yaml, "
                    "start a worker, print the UI URL and wait; Ctrl-C stops what this command started.")
    p.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=4200, help="server port (default 4200, Prefect's)")
    p.add_argument("--log-dir", default=None, help="server/worker logs (default .monolidar-ui/ in the checkout)")
    p.add_argument("--worker-limit", type=int, default=None, help="flow runs the worker runs at once")
    p.set_defaults(func=cmd_ui)
