"""Prefect task of the fidelity report and the calibration: one task per report (a photo + a sweep).

The arrays (photo, teacher output, sparse maps) stay inside the task; only the small report dict and the
paths of the files it wrote travel through Prefect results.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from tasks.errors import InputError
from tasks.fidelity import compare, fit_disparity_alignment, project_sweep, side_by_side, simulate_on_photo
from tasks.sensors import SensorProfile, load_profile, parse_profile


def parse_intrinsics(text: str) -> np.ndarray:
    """"fx,fy,cx,cy" (or "f,cx,cy") -> (3, 3) K."""
    try:
        v = [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise InputError(f"intrinsics {text!r}: expected numbers 'fx,fy,cx,cy'") from None
    if len(v) == 3:
        v = [v[0], v[0], v[1], v[2]]
    if len(v) != 4 or v[0] <= 0 or v[1] <= 0:
        raise InputError(f"intrinsics {text!r}: expected 'fx,fy,cx,cy' with fx, fy > 0")
    return np.array([[v[0], 0.0, v[2]], [0.0, v[1], v[3]], [0.0, 0.0, 1.0]])


def fitted_profile_from_scans(scans: list[str], calib: str | None, *, name: str, camera: str | None = None,
                              image: str | None = None, teacher: str | None = None, photo: bool = True):
    """Read sweeps + calibration (storage.lidar_scans) and fit a profile (tasks.calibrate).

    With a photo of the first sweep (`image`, else the one the calibration names; `photo=False` skips it) and
    intensities in the sweeps, the link budget is fitted too: the teacher's depth of the photo, aligned to the
    sweep (tasks.fidelity.fit_disparity_alignment, sky from the photo), gives the range of every firing that
    points at a surface the camera sees, returned or not (tasks.calibrate.fit_detection_range)."""
    from storage.lidar_scans import read_calib, read_scan
    from tasks.calibrate import firing_ranges_in_photo, fit_detection_range, fit_profile, with_detection

    sweeps = [read_scan(s) for s in scans]
    cal = read_calib(calib, camera=camera) if calib else None
    fit = fit_profile([s.points for s in sweeps], [s.ring for s in sweeps],
                      None if cal is None else cal.cam_from_lidar, name=name,
                      intensities=[s.intensity for s in sweeps])
    image = image or (str(cal.image) if cal is not None and cal.image else None)
    if not photo or image is None or cal is None or fit.reflectance_quantiles is None:
        return fit
    from model.teacher import Teacher
    from tasks.depth_policy import DepthPolicy, disparity_to_depth
    from tasks.images import load_image

    rgb = load_image(image)
    t = Teacher(teacher)
    disp, kind = _as_disparity(t.predict(rgb[None])[0], t.output_kind)
    real = project_sweep(sweeps[0].points, cal.cam_from_lidar, cal.K, rgb.shape[0], rgb.shape[1])
    alignment = fit_disparity_alignment(disp, real)
    policy = DepthPolicy()
    depth, _ = disparity_to_depth(disp, kind=kind, seed=0, policy=policy, rgb=rgb,
                                  affine=(alignment["scale"], alignment["shift"]))
    ranges, returned = firing_ranges_in_photo(fit.firings[0], depth, cal.K, cal.cam_from_lidar,
                                              max_depth_m=policy.max_depth_m)
    lo, hi = fit.profile["min_range_m"], fit.profile["max_range_m"]
    inside = (ranges >= lo) & (ranges <= hi)  # beyond the sensor's range the simulation has no return either
    detection = fit_detection_range(ranges[inside], returned[inside], fit.reflectance_quantiles,
                                    base_drop=fit.profile["drop"]["random"])
    detection.update(image=str(image), alignment=alignment)
    return with_detection(fit, detection)


def _as_disparity(output: np.ndarray, kind: str) -> tuple[np.ndarray, str]:
    """A teacher output as disparity, the space the alignment fits in (a metric teacher's depth inverted)."""
    if kind == "metric":
        output = np.where(np.isfinite(output) & (output > 0), 1.0 / np.where(output > 0, output, 1.0), 0.0)
    return output, "disparity"


def _profile(sensor: str | None, scan: str | None, calib: str | None, camera: str | None, image: str | None,
             teacher: str | None) -> SensorProfile:
    if sensor:
        return load_profile(sensor)
    if not scan:
        raise InputError("no --sensor given and no scan to fit one from")
    fit = fitted_profile_from_scans([scan], calib, name="fitted", camera=camera, image=image, teacher=teacher)
    return parse_profile(fit.profile, f"profile fitted from {scan}")


def fidelity_report(*, image: str | None, scan: str | None = None, calib: str | None = None,
                    reference_depth: str | None = None, intrinsics: str | None = None, sensor: str | None = None,
                    seeds: int = 8, seed: int = 0, teacher: str | None = None, out: str | None = None,
                    camera: str | None = None, tolerance: float = 0.10, see_through: bool = False,
                    align: bool = True) -> dict[str, Any]:
    """Real pattern (a sweep + calibration, or a KITTI depth PNG as a proxy) vs the simulated one on the
    photo; writes report.json and side_by_side.png into `out` when given. Returns the report.

    align (default): the teacher's scale and shift are fitted to the real pattern (tasks.fidelity
    .fit_disparity_alignment) so the headline figures measure the sensor, not the depth policy's random
    draw; the policy-drawn comparison is reported beside it under "policy_draw". align=False: the
    policy's draw alone, as a dataset build makes it."""
    from model.teacher import Teacher
    from storage.lidar_scans import read_calib, read_scan
    from storage.pngio import read_depth_png
    from tasks.images import load_image

    if (scan is None) == (reference_depth is None):
        raise InputError("give either a real scan (--scan with --calib) or a reference depth PNG (--reference-depth)")
    if seeds < 1:
        raise InputError(f"seeds must be >= 1, got {seeds}")
    if scan is not None:
        if not calib:
            raise InputError(f"{scan}: a calibration file (--calib) is needed to project the scan into the photo")
        cal = read_calib(calib, camera=camera)
        image = image or (str(cal.image) if cal.image else None)
        if not image:
            raise InputError(f"{calib}: names no image; pass --image")
        rgb = load_image(image)
        K = cal.K
        real = project_sweep(read_scan(scan).points, cal.cam_from_lidar, K, rgb.shape[0], rgb.shape[1])
        source = {"scan": str(scan), "calib": str(calib)}
    else:
        if not image or not intrinsics:
            raise InputError(f"{reference_depth}: a reference depth needs --image and --intrinsics fx,fy,cx,cy")
        rgb = load_image(image)
        K = parse_intrinsics(intrinsics)
        real = read_depth_png(reference_depth)
        if real.shape != rgb.shape[:2]:
            raise InputError(f"{reference_depth}: depth is {real.shape[1]}x{real.shape[0]}, the image "
                             f"{rgb.shape[1]}x{rgb.shape[0]}")
        source = {"reference_depth": str(reference_depth), "intrinsics": intrinsics}
    profile = _profile(sensor, scan, calib, camera, image, teacher)
    t = Teacher(teacher)
    disp = t.predict(rgb[None])[0]
    kind = t.output_kind
    seed_list = [seed + k for k in range(seeds)]
    proxy = reference_depth is not None
    policy_sims = simulate_on_photo(disp, K, profile, seeds=seed_list, teacher_kind=kind,
                                    see_through=see_through, rgb=rgb)
    policy_report = compare(real, policy_sims, tolerance=tolerance, real_is_proxy=proxy)
    if align:
        disp, kind = _as_disparity(disp, kind)
        alignment = fit_disparity_alignment(disp, real)
        sims = simulate_on_photo(disp, K, profile, seeds=seed_list, teacher_kind=kind, see_through=see_through,
                                 rgb=rgb, alignment=alignment)
        report = compare(real, sims, tolerance=tolerance, real_is_proxy=proxy)
        report.update(teacher_scale="aligned to the reference", alignment=alignment,
                      policy_draw={k: policy_report[k] for k in ("stats", "wasserstein_m", "passed")})
    else:
        sims, report = policy_sims, policy_report
        report.update(teacher_scale="depth policy draw")
    report.update(image=str(image), sensor=profile.name, sensor_source=str(profile.source or "fitted"),
                  teacher_sha256=t.sha256, seed_list=seed_list, **source)
    if out:
        from PIL import Image

        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        label = "reference (GT proxy)" if reference_depth else "real scan"
        pic = side_by_side(rgb, real, sims[0], labels=(label, f"simulated {profile.name} (seed {seed_list[0]})"))
        Image.fromarray(pic).save(out_dir / "side_by_side.png")
        (out_dir / "report.json").write_text(json.dumps(report, indent=1))
        report["files"] = {"picture": str(out_dir / "side_by_side.png"), "json": str(out_dir / "report.json")}
    return report


fidelity_task = task(fidelity_report, name="fidelity-report", persist_result=False)
