"""Prefect flows (wiring only) and the `monolidar` command line."""
