"""Prefect flow: how real does the simulated LiDAR look on a photo with a real scan (or a proxy)?"""
from __future__ import annotations

import base64
import io
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.failures import readable_failures
from tasks.fidelity import table_rows
from tasks.fidelity_tasks import fidelity_task


@flow(name="sensor-fidelity", log_prints=True)
@readable_failures
def fidelity_flow(
    image: str | None = None,
    scan: str | None = None,
    calib: str | None = None,
    reference_depth: str | None = None,
    intrinsics: str | None = None,
    sensor: str | None = None,
    seeds: int = 8,
    seed: int = 0,
    teacher: str | None = None,
    out: str | None = None,
    camera: str | None = None,
    tolerance: float = 0.10,
    see_through: bool = False,
    align: bool = True,
) -> dict:
    """Compare a real LiDAR pattern with the simulation of a sensor profile on the same photo.

    Args:
        image: the photo; empty = the image named by the calibration file.
        scan: real sweep (.pcd.bin, .bin, .npy/.npz, .pcd) in the LiDAR frame.
        calib: camera/LiDAR calibration (nuScenes-style JSON, DGP JSON or KITTI calib text).
        reference_depth: instead of a scan, a KITTI depth PNG used as a proxy pattern (density not judged).
        intrinsics: with reference_depth: "fx,fy,cx,cy" of the photo.
        sensor: profile name or file; empty = fit one from the scan.
        seeds: simulations averaged (seeds seed .. seed+seeds-1).
        seed: first seed.
        teacher: ONNX depth teacher; empty = the embedded one.
        out: folder for report.json and side_by_side.png.
        camera: camera name in a DGP calibration (default: the first camera).
        tolerance: relative error accepted for density, first-return row and rows covered.
        see_through: simulate with the hidden background layer (see-through returns).
        align: fit the teacher's scale/shift to the real pattern (default) so the figures measure the sensor;
            the depth policy's seeded draw is reported beside it. False: the policy's draw only.
    """
    report = fidelity_task(image=image, scan=scan, calib=calib, reference_depth=reference_depth,
                           intrinsics=intrinsics, sensor=sensor, seeds=seeds, seed=seed, teacher=teacher, out=out,
                           camera=camera, tolerance=tolerance, see_through=see_through, align=align)
    create_table_artifact(table_rows(report), key="sensor-fidelity",
                          description=f"{report['sensor']} on {report['image']}: real vs simulated")
    pic = report.get("files", {}).get("picture")
    if pic:
        from PIL import Image

        im = Image.open(pic)
        im.thumbnail((1600, 1600))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=80)
        b64 = base64.b64encode(buf.getvalue()).decode()
        create_markdown_artifact(f"# Fidelity: {report['sensor']}\n\n![{Path(pic).name}](data:image/jpeg;base64,{b64})\n",
                                 key="sensor-fidelity-picture", description="real | simulated, coloured by depth")
    return report
