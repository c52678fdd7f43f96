"""`monolidar inspect` and `monolidar export-kitti`: look into a store, hand it to KITTI-format tools."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise a dataset store (counts, status, teacher, sensor)")
    p.add_argument("store", help="path of the dataset store")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=inspect_cmd)

    p = sub.add_parser("export-kitti", help="write a store's ok samples in the KITTI depth-completion layout")
    p.add_argument("store", help="path of the dataset store")
    p.add_argument("outdir", help="output directory (val_selection_cropped layout)")
    p.set_defaults(func=export_kitti_cmd)


def inspect_cmd(args: argparse.Namespace) -> int:
    from storage.store import DatasetStore, store_summary

    summary = store_summary(DatasetStore.open(args.store))
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return 0
    status = ", ".join(f"{k} {v}" for k, v in summary["status"].items())
    density = summary["lidar_density_mean"]
    teacher = summary["teacher"] or {}
    print(f"store       {summary['path']}")
    print(f"samples     {summary['samples']} ({status})")
    print(f"shards      {summary['shards']} complete of {summary['shards_allocated']} allocated, "
          f"{summary['shard_size']} samples each")
    print(f"image size  {summary['height']} x {summary['width']}")
    print(f"lidar       {summary['sensor']}, mean density "
          f"{'n/a' if density is None else f'{100 * density:.2f} %'}")
    print(f"teacher     {teacher.get('path', '?')} (sha256 {str(teacher.get('sha256', '?'))[:12]}, "
          f"{teacher.get('output_kind', '?')})")
    print(f"code        {summary['code_version']}, created {summary['created']}")
    return 0


def export_kitti_cmd(args: argparse.Namespace) -> int:
    from storage.kitti import export_store_to_kitti

    counts = export_store_to_kitti(args.store, args.outdir)
    print(f"exported {counts['exported']} samples to {counts['outdir']} "
          f"(skipped {counts['skipped']} not ok)")
    return 0
