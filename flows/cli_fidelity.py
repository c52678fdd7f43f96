"""`monolidar calibrate-sensor` (fit a profile from real sweeps) and `monolidar fidelity` (real vs simulated)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _calibrate(args: argparse.Namespace) -> int:
    import yaml

    from tasks.fidelity_tasks import fitted_profile_from_scans
    from tasks.sensors import parse_profile

    out = Path(args.out)
    name = args.name or out.stem
    fit = fitted_profile_from_scans([str(s) for s in args.scan], args.calib, name=name, camera=args.camera,
                                    image=args.image, teacher=args.teacher, photo=not args.no_photo)
    parse_profile(fit.profile, str(out))  # the fitted mapping must load as a profile
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Fitted by `monolidar calibrate-sensor` from {', '.join(str(s) for s in args.scan)}"
              f"{' with ' + str(args.calib) if args.calib else ''}.\n")
    out.write_text(header + yaml.safe_dump(fit.profile, sort_keys=False, default_flow_style=None, width=110))
    if args.report:
        Path(args.report).write_text(json.dumps(fit.report, indent=1))
    if args.json:
        print(json.dumps({"profile": fit.profile, "report": fit.report}, indent=1))
    else:
        p, r = fit.profile, fit.report
        el = p["elevations_deg"]
        print(f"{out}: {len(el)} beams ({r['elevation_method']}) from {el[0]:+.2f} to {el[-1]:+.2f} deg, "
              f"azimuth step {p['azimuth_step_deg']:.4f} deg, range {p['min_range_m']}-{p['max_range_m']} m, "
              f"noise {p['range_noise_std_m']} m, drop {p['drop']}")
        if r.get("detection_fit"):
            d = r["detection_fit"]
            print(f"  link budget from {d['firings']} firings at surfaces in {d['image']}: a median-reflectance "
                  f"target drops out at {d['range_m']} m (sweep alone: "
                  f"{r['reflectance']['sweep_only_range_m']} m); replaces the far rise {r['replaced_far_rise']}")
        if r.get("elevation_minus_ring_mean_deg"):
            print(f"  fitted elevations vs ring means: max |difference| "
                  f"{max(abs(d) for d in r['elevation_minus_ring_mean_deg']):.3f} deg")
    return 0


def _fidelity(args: argparse.Namespace) -> int:
    from flows.fidelity import fidelity_flow
    from tasks.fidelity import table_rows

    report = fidelity_flow(image=args.image, scan=args.scan, calib=args.calib, reference_depth=args.reference_depth,
                           intrinsics=args.intrinsics, sensor=args.sensor, seeds=args.seeds, seed=args.seed,
                           teacher=args.teacher, out=args.out, camera=args.camera, tolerance=args.tolerance,
                           see_through=args.see_through, align=not args.no_align)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    rows = table_rows(report)
    keys = list(rows[0])
    widths = [max(len(str(k)), *(len(_fmt(r[k])) for r in rows)) for k in keys]
    print(f"{report['sensor']} on {report['image']} ({report['seeds']} seeds)"
          f"{' - reference is a proxy, density not judged' if report['real_is_proxy'] else ''}")
    print("  ".join(str(k).ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
        print("  ".join(_fmt(r[k]).ljust(w) for k, w in zip(keys, widths)))
    if report.get("policy_draw"):
        a, pd = report["alignment"], report["policy_draw"]["stats"]
        print(f"teacher aligned to the reference (scale {a['scale']:.4g}, shift {a['shift']:.4g}, "
              f"median abs rel {a['median_abs_rel']}); with the depth policy's draw instead: "
              + ", ".join(f"{k} {pd[k]['rel_error']:+.1%}" for k in ("density", "density_kitti_crop", "first_row",
                                                                      "rows_covered") if pd[k]["rel_error"] is not None))
    q = report["depth_quantiles_m"]
    print(f"depth quantiles {q['q']}: real {q['real']}, simulated {q['sim']}")
    if report.get("files"):
        print(f"picture: {report['files']['picture']}")
    print("PASS" if report["passed"] else "FAIL", f"(±{report['tolerance']:.0%})")
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("calibrate-sensor", help="fit a LiDAR sensor profile from real sweeps",
                              description="Fit beam elevations, azimuth step, range limits, drops, noise and the "
                                          "mount pose of a spinning LiDAR from one or more real sweeps.")
    p.add_argument("scan", nargs="+", help="sweep files (.pcd.bin, .bin, .npy, .npz, .pcd)")
    p.add_argument("--calib", help="camera/LiDAR calibration (JSON or KITTI text) for the mount pose")
    p.add_argument("--camera", help="camera name in a DGP calibration")
    p.add_argument("--image", help="photo of the first sweep for the link-budget fit (default: the one the "
                                   "calibration names)")
    p.add_argument("--teacher", help="ONNX depth teacher for the link-budget fit (default: the embedded one)")
    p.add_argument("--no-photo", action="store_true",
                   help="fit from the sweeps alone (linear far-range rise instead of the photo-fitted link budget)")
    p.add_argument("--out", required=True, help="profile file to write (.yaml)")
    p.add_argument("--name", help="profile name (default: the output file's stem)")
    p.add_argument("--report", help="also write the fit report (JSON) here")
    p.add_argument("--json", action="store_true", help="print profile and report as JSON")
    p.set_defaults(func=_calibrate)

    p = subparsers.add_parser("fidelity", help="compare a real LiDAR pattern with the simulated one on a photo",
                              description="Project a real sweep into its photo, simulate a sensor profile on the "
                                          "same photo (teacher, seeds averaged) and compare the patterns.")
    p.add_argument("--scan", help="real sweep in the LiDAR frame")
    p.add_argument("--calib", help="calibration (JSON or KITTI text)")
    p.add_argument("--image", help="the photo (default: the one named by the calibration)")
    p.add_argument("--reference-depth", help="instead of a scan: a KITTI depth PNG as a proxy pattern")
    p.add_argument("--intrinsics", help="with --reference-depth: fx,fy,cx,cy of the photo")
    p.add_argument("--sensor", help="profile name or file (default: fit one from the scan)")
    p.add_argument("--seeds", type=int, default=8, help="simulations averaged (default 8)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--teacher", help="ONNX depth teacher (default: the embedded one)")
    p.add_argument("--camera", help="camera name in a DGP calibration")
    p.add_argument("--tolerance", type=float, default=0.10, help="accepted relative error (default 0.10)")
    p.add_argument("--see-through", action="store_true", help="simulate see-through returns")
    p.add_argument("--no-align", action="store_true",
                   help="do not fit the teacher's scale/shift to the real pattern; judge the depth policy's "
                        "seeded draw (by default it is only reported beside the aligned figures)")
    p.add_argument("--out", help="folder for report.json and side_by_side.png")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_fidelity, runs_flows=True)


if __name__ == "__main__":  # pragma: no cover
    from flows.cli import main

    sys.exit(main(["fidelity", *sys.argv[1:]]))
