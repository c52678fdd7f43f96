"""Held-out check of calibrate-sensor on the DDAD-style scene (../shared/data/real_lidar/ddad_like): fit a profile
on one frame, evaluate `monolidar fidelity` on every frame (the other two are held out), with the photo-fitted
link budget ("photo") and from the sweep alone ("sweep only"). Teacher aligned to each frame's scan, 4 seeds.

    python bench/fidelity_heldout_ddad.py [--camera CAMERA_01] [--seeds 4]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from tasks.fidelity_tasks import fidelity_report, fitted_profile_from_scans

ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real_lidar" / "ddad_like" / "scene_01"
KEYS = ("density", "density_kitti_crop", "first_row", "rows_covered")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--camera", default="CAMERA_01")
    ap.add_argument("--seeds", type=int, default=4)
    args = ap.parse_args()
    scans = sorted((ROOT / "point_cloud" / "LIDAR").glob("*.npz"))
    calib = str(next((ROOT / "calibration").glob("*.json")))
    images = sorted((ROOT / "rgb" / args.camera).glob("*.jpg"))
    tmp = Path(tempfile.mkdtemp(prefix="ddad-fit-"))
    profiles = {}
    print("| fitted on | beams | azimuth step (deg) | random drop | sweep-only far rise | link budget range (m) |")
    print("|---|---|---|---|---|---|")
    for i, (scan, image) in enumerate(zip(scans, images)):
        photo = fitted_profile_from_scans([str(scan)], calib, name=f"f{i}", camera=args.camera, image=str(image))
        plain = fitted_profile_from_scans([str(scan)], calib, name=f"f{i}", camera=args.camera, photo=False)
        d = plain.profile["drop"]
        print(f"| frame {i} | {len(photo.profile['elevations_deg'])} | {photo.profile['azimuth_step_deg']:.4f} | "
              f"{d['random']:.3f} | {d.get('far_start_m', '-')} m -> {d.get('far_max', 0):.2f} | "
              f"{photo.profile.get('detection', {}).get('range_m', '-')} |")
        for kind, fit in (("photo", photo), ("sweep only", plain)):
            path = tmp / f"f{i}_{kind.replace(' ', '_')}.yaml"
            path.write_text(yaml.safe_dump(fit.profile, sort_keys=False))
            profiles[(i, kind)] = str(path)
    print()
    print("| fitted on -> evaluated on | fit | density | density (KITTI crop) | first-return row | rows covered | Wasserstein (m) |")
    print("|---|---|---|---|---|---|---|")
    for (i, kind), path in profiles.items():
        for j, (scan, image) in enumerate(zip(scans, images)):
            rep = fidelity_report(image=str(image), scan=str(scan), calib=calib, camera=args.camera, sensor=path,
                                  seeds=args.seeds)
            s = rep["stats"]
            cells = " | ".join(f"{s[k]['sim_mean']:.4g} vs {s[k]['real']:.4g} ({s[k]['rel_error']:+.1%})" for k in KEYS)
            print(f"| {i} -> {j}{' (held out)' if i != j else ''} | {kind} | {cells} | {rep['wasserstein_m']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
