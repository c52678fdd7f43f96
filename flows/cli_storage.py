"""`monolidar inspect`, `verify` and `export-kitti`: look into a store, check it, hand it to KITTI-format tools."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise a dataset store (counts, status, teacher, sensor)")
    p.add_argument("store", help="path of the dataset store")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=inspect_cmd)

    p = sub.add_parser("verify", help="check every shard (hashes, checksums, manifest statistics, plan) and "
                                      "mark bad shards so that `monolidar repair` rebuilds them")
    p.add_argument("store", help="path or URL (s3://bucket/ds.zarr) of the dataset store")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-mark", action="store_true", help="only report; leave bad shards committed")
    p.add_argument("--inputs", action="store_true",
                   help="also re-read every input and flag shards built from files whose content changed since")
    p.set_defaults(func=verify_cmd)

    p = sub.add_parser("export-kitti", help="write a store's ok samples in the KITTI depth-completion layout")
    p.add_argument("store", help="path of the dataset store")
    p.add_argument("outdir", help="output directory")
    p.add_argument("--layout", choices=("val_selection_cropped", "train"), default="val_selection_cropped",
                   help="val_selection_cropped (default: image/ velodyne_raw/ groundtruth_depth/ intrinsics/) or "
                        "train (data_depth_annotated/, data_depth_velodyne/, raw/ with the teacher disparity "
                        "under image_02/disp/ and calib_cam_to_cam.txt: the BP-Net / DMD3C training layout)")
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


def verify_cmd(args: argparse.Namespace) -> int:
    """Exit 0 when the store is sound, 1 when damage was found (and, unless --no-mark, marked for repair)."""
    import sys

    from storage.verify import verify_store

    report = verify_store(args.store, mark=not args.no_mark, inputs=args.inputs)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
        return 0 if report.ok else 1
    print(f"{report.store}: {report.shards_checked} committed shards checked, {len(report.bad_shards)} bad, "
          f"{len(report.plan_problems)} plan problems")
    for bad in report.bad_shards:
        print(f"  shard {bad['shard']:05d}: {bad['reason']}")
    for prob in report.plan_problems:
        print(f"  plan: {prob['reason']}")
    if report.marked:
        print(f"marked {len(report.marked)} shards for repair: run `monolidar repair {args.store}`")
    if report.plan_restored:
        print("restored the damaged plan rows from the committed shards")
    elif report.plan_problems and not args.no_mark:
        print("the plan could not be restored from the committed shards; rebuild the store", file=sys.stderr)
    return 0 if report.ok else 1


def export_kitti_cmd(args: argparse.Namespace) -> int:
    from storage.kitti import export_store_to_kitti

    counts = export_store_to_kitti(args.store, args.outdir, layout=args.layout)
    print(f"exported {counts['exported']} samples to {counts['outdir']} "
          f"(skipped {counts['skipped']} not ok)")
    return 0
