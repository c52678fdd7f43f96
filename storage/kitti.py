"""KITTI depth-completion (KITTI-DC) I/O: find, read and write both layouts; export a store to KITTI-DC.

Depth PNGs are uint16, metres * 256, 0 = no data (see storage.pngio). Layouts read by find_kitti_dc:

* drive layout (the train/val download): ``<root>/[<split>/]<drive>/proj_depth/{velodyne_raw,groundtruth}/
  image_0{2,3}/<frame>.png``, RGB at ``<drive>/image_0X/data/<frame>.png`` or in KITTI raw-data date folders
  ``<root or its parent>/<YYYY_MM_DD>/<drive>/image_0X/data/<frame>.png``; intrinsics from the raw data's
  ``<YYYY_MM_DD>/calib_cam_to_cam.txt`` (P_rect_0X) when present.
* val_selection_cropped layout: ``<root>/{image,velodyne_raw,groundtruth_depth,intrinsics}/`` (or under
  ``<root>/depth_selection/val_selection_cropped/``) with KITTI's names, e.g.
  ``image/<drive>_image_<frame>_image_02.png``, ``velodyne_raw/<drive>_velodyne_raw_<frame>_image_02.png``,
  ``groundtruth_depth/<drive>_groundtruth_depth_<frame>_image_02.png``, ``intrinsics/<image stem>.txt``
  (9 numbers, row-major K).

Item names are the val_selection image stems (``<drive>_image_<frame>_image_02``) in both layouts, so a
drive-layout set re-written with write_kitti_dc keeps KITTI's own file names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from storage.pngio import read_depth_png, read_rgb, write_depth_png, write_rgb_png
from tasks.errors import InputError
from tasks.provenance import derive_seed
from tasks.sparsify import sparsify_scanlines

__all__ = [
    "KittiItem", "find_kitti_dc", "load_kitti_item", "read_depth_png", "write_depth_png", "write_kitti_dc",
    "export_store_to_kitti", "kitti_dc_from_gt_dir", "read_intrinsics_txt", "write_intrinsics_txt",
    "KITTI_CROP", "EXPORT_LAYOUTS", "disparity_to_uint8", "write_calib_cam_to_cam",
]

KITTI_CROP = (352, 1216)  # benchmark crop: bottom 352 rows, central 1216 columns
_CAMERAS = ("image_02", "image_03")
_VAL_DIRS = ("image", "velodyne_raw", "groundtruth_depth", "intrinsics")
_LAYOUTS_HELP = ("accepted layouts: <root>/[<split>/]<drive>/proj_depth/{velodyne_raw,groundtruth}/image_02/*.png, "
                 "or <root>/[depth_selection/val_selection_cropped/]{image,velodyne_raw,groundtruth_depth,intrinsics}/")


@dataclass
class KittiItem:
    """One KITTI-DC frame: where its files are. sparse_path/gt_path are None when the set has none."""

    name: str
    rgb_path: Path
    sparse_path: Path | None
    gt_path: Path | None
    K: np.ndarray | None


# ---------------------------------------------------------------------------------------------- intrinsics
def read_intrinsics_txt(path: str | Path) -> np.ndarray:
    """KITTI val_selection intrinsics file (9 numbers, row-major) -> float32 (3, 3)."""
    path = Path(path)
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable intrinsics file ({exc})") from None
    if values.size != 9:
        raise InputError(f"{path}: expected 9 numbers (row-major 3x3 K), found {values.size}")
    return values.reshape(3, 3).astype(np.float32)


def write_intrinsics_txt(path: str | Path, K: np.ndarray) -> None:
    K = np.asarray(K, dtype=np.float64).reshape(-1)
    if K.size != 9:
        raise InputError(f"{path}: K must have 9 entries, got {K.size}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # 9 significant digits round-trip float32 exactly
    Path(path).write_text(" ".join(f"{v:.9g}" for v in K) + "\n")


def _calib_K(calib: Path, camera: str) -> np.ndarray | None:
    """P_rect_0X from a raw-data calib_cam_to_cam.txt -> its 3x3 left block (the rectified K)."""
    key = f"P_rect_{camera[-2:]}:"
    for line in calib.read_text().splitlines():
        if line.startswith(key):
            values = np.array(line[len(key):].split(), dtype=np.float64)
            if values.size != 12:
                raise InputError(f"{calib}: {key} has {values.size} numbers, expected 12")
            return values.reshape(3, 4)[:, :3].astype(np.float32)
    return None


# ---------------------------------------------------------------------------------------------- finding
def _val_root(root: Path) -> Path | None:
    for cand in (root, root / "depth_selection" / "val_selection_cropped", root / "val_selection_cropped"):
        if (cand / "image").is_dir() and (cand / "velodyne_raw").is_dir():
            return cand
    return None


def _kind_stem(image_stem: str, kind: str, path: Path) -> str:
    if "_image_" not in image_stem:
        raise InputError(f"{path}: file name lacks KITTI's '_image_' token (expected <drive>_image_<frame>_image_02.png)")
    return image_stem.replace("_image_", f"_{kind}_", 1)


def _find_val_selection(base: Path) -> list[KittiItem]:
    images = sorted((base / "image").glob("*.png"))
    if not images:
        raise InputError(f"{base / 'image'}: no PNG images")
    has_gt = (base / "groundtruth_depth").is_dir()
    has_K = (base / "intrinsics").is_dir()
    items = []
    for img in images:
        stem = img.stem
        sparse = base / "velodyne_raw" / f"{_kind_stem(stem, 'velodyne_raw', img)}.png"
        if not sparse.is_file():
            raise InputError(f"{sparse}: missing velodyne_raw file for {img.name}")
        gt = base / "groundtruth_depth" / f"{_kind_stem(stem, 'groundtruth_depth', img)}.png" if has_gt else None
        if gt is not None and not gt.is_file():
            raise InputError(f"{gt}: missing groundtruth_depth file for {img.name}")
        K = None
        if has_K:
            k_path = base / "intrinsics" / f"{stem}.txt"
            if not k_path.is_file():
                raise InputError(f"{k_path}: missing intrinsics file for {img.name}")
            K = read_intrinsics_txt(k_path)
        items.append(KittiItem(stem, img, sparse, gt, K))
    return items


def _find_drives(root: Path) -> list[KittiItem]:
    drive_dirs = sorted({p.parent for p in [*root.glob("*/proj_depth"), *root.glob("*/*/proj_depth")] if p.is_dir()})
    items = []
    for drive_dir in drive_dirs:
        drive = drive_dir.name
        date = drive[:10]
        for camera in _CAMERAS:
            vel = drive_dir / "proj_depth" / "velodyne_raw" / camera
            gtd = drive_dir / "proj_depth" / "groundtruth" / camera
            frames = sorted({p.stem for d in (vel, gtd) if d.is_dir() for p in d.glob("*.png")})
            if not frames:
                continue
            rgb_dirs = [drive_dir / camera / "data"] + [
                base / date / drive / camera / "data" for base in dict.fromkeys((root, drive_dir.parent, root.parent))
            ]
            calibs = [base / date / "calib_cam_to_cam.txt" for base in dict.fromkeys((root, drive_dir.parent, root.parent))]
            calib = next((c for c in calibs if c.is_file()), None)
            K = _calib_K(calib, camera) if calib else None
            for frame in frames:
                rgb = next((d / f"{frame}.png" for d in rgb_dirs if (d / f"{frame}.png").is_file()), None)
                if rgb is None:
                    raise InputError(f"{rgb_dirs[0] / (frame + '.png')}: missing RGB image for {drive} {camera} {frame}")
                sparse = vel / f"{frame}.png" if vel.is_dir() else None
                gt = gtd / f"{frame}.png" if gtd.is_dir() else None
                for p, kind in ((sparse, "velodyne_raw"), (gt, "groundtruth")):
                    if p is not None and not p.is_file():
                        raise InputError(f"{p}: missing {kind} file for {drive} {camera} {frame}")
                items.append(KittiItem(f"{drive}_image_{frame}_{camera}", rgb, sparse, gt, K))
    return items


def find_kitti_dc(root: str | Path) -> list[KittiItem]:
    """Every frame of a KITTI-DC directory (either layout), sorted by name. InputError on missing files or an
    unknown layout."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such directory")
    val = _val_root(root)
    items = _find_val_selection(val) if val is not None else _find_drives(root)
    if not items:
        raise InputError(f"{root}: no KITTI depth-completion data found ({_LAYOUTS_HELP})")
    return sorted(items, key=lambda it: it.name)


# ---------------------------------------------------------------------------------------------- loading
def load_kitti_item(item: KittiItem) -> dict:
    """-> {"name", "rgb" uint8 (H,W,3), "sparse" float32 m (zeros if absent), "gt" float32 m or None,
    "K" float32 (3,3) or None}. A depth map whose size differs from the image -> InputError."""
    rgb = read_rgb(item.rgb_path)
    h, w = rgb.shape[:2]
    out = {"name": item.name, "rgb": rgb, "sparse": np.zeros((h, w), np.float32), "gt": None,
           "K": None if item.K is None else np.asarray(item.K, np.float32)}
    for key, path in (("sparse", item.sparse_path), ("gt", item.gt_path)):
        if path is None:
            continue
        depth = read_depth_png(path)
        if depth.shape != (h, w):
            raise InputError(f"{path}: size {depth.shape[0]}x{depth.shape[1]} differs from {item.rgb_path} {h}x{w}")
        out[key] = depth
    return out


# ---------------------------------------------------------------------------------------------- writing
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _image_stem(name: str) -> str:
    """A sample name -> its KITTI image stem. KITTI-style names (containing '_image_') are kept as they are."""
    safe = _UNSAFE.sub("-", str(name)).strip("-") or "sample"
    return safe if "_image_" in safe else f"{safe}_image_02"


def write_kitti_dc(outdir: str | Path, samples: Iterable[dict], layout: str = "val_selection_cropped") -> list[Path]:
    """Write samples ({"name", "rgb" uint8 HxWx3, "sparse" metres, optional "gt" metres, optional "K"}) as a
    KITTI val_selection_cropped directory; returns the image paths written, in order. Either every sample
    has gt (and K) or none has, so the directory reads back with find_kitti_dc."""
    if layout != "val_selection_cropped":
        raise InputError(f"{outdir}: layout {layout!r} not supported for writing (use 'val_selection_cropped')")
    outdir = Path(outdir)
    written: list[Path] = []
    seen: set[str] = set()
    has_gt = has_K = None
    for sample in samples:
        stem = _image_stem(sample["name"])
        if stem in seen:
            raise InputError(f"{outdir}: duplicate sample name {sample['name']!r}")
        seen.add(stem)
        gt, K = sample.get("gt"), sample.get("K")
        if has_gt is None:
            has_gt, has_K = gt is not None, K is not None
        if (gt is not None) != has_gt or (K is not None) != has_K:
            raise InputError(f"{outdir}: sample {sample['name']!r}: gt/K present for some samples but not others")
        rgb = np.asarray(sample["rgb"])
        image = outdir / "image" / f"{stem}.png"
        write_rgb_png(image, rgb)
        sparse = sample.get("sparse")
        sparse = np.zeros(rgb.shape[:2], np.float32) if sparse is None else sparse
        write_depth_png(outdir / "velodyne_raw" / f"{_kind_stem(stem, 'velodyne_raw', image)}.png", sparse)
        if gt is not None:
            write_depth_png(outdir / "groundtruth_depth" / f"{_kind_stem(stem, 'groundtruth_depth', image)}.png", gt)
        if K is not None:
            write_intrinsics_txt(outdir / "intrinsics" / f"{stem}.txt", K)
        written.append(image)
    return written


EXPORT_LAYOUTS = ("val_selection_cropped", "train")
_TRAIN_BASELINE_M = 0.54  # KITTI's stereo baseline, for the nominal P_rect_03 some loaders also parse


def disparity_to_uint8(teacher_output: np.ndarray, kind: str) -> np.ndarray:
    """Teacher output -> 8-bit disparity image (near = bright), min-max scaled per image to 0..255: the
    relative-disparity PNG convention DMD3C's distillation loader reads (image_02/disp/). A metric ``depth``
    output is inverted first; non-finite or non-positive values map to 0."""
    d = np.asarray(teacher_output, dtype=np.float64)
    if kind == "depth":
        with np.errstate(divide="ignore"):
            d = np.where(d > 0, 1.0 / d, 0.0)
    d = np.where(np.isfinite(d), d, 0.0)
    lo, hi = float(d.min()), float(d.max())
    if hi <= lo:
        return np.zeros(d.shape, np.uint8)
    return np.rint((d - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def write_calib_cam_to_cam(path: str | Path, K: np.ndarray, size_hw: tuple[int, int]) -> None:
    """A KITTI raw-data calib_cam_to_cam.txt for synthetic camera 2 = the rectified reference: P_rect_02 =
    [K | 0] (what BP-Net / DMD3C loaders take K from), P_rect_03 with KITTI's 0.54 m baseline (parsed by
    those loaders, unused by monolidar), P_rect_00 = [K | 0], S_rect_0X = image size."""
    K = np.asarray(K, np.float64).reshape(3, 3)
    p02 = np.hstack([K, np.zeros((3, 1))])
    p03 = p02.copy()
    p03[0, 3] = -K[0, 0] * _TRAIN_BASELINE_M
    h, w = size_hw
    fmt = lambda a: " ".join(f"{v:.9e}" for v in np.asarray(a, np.float64).reshape(-1))  # noqa: E731
    lines = ["calib_time: synthetic (monolidar export-kitti --layout train)", "corner_dist: 0.000000e+00"]
    for cam, P in (("00", p02), ("02", p02), ("03", p03)):
        lines += [f"S_rect_{cam}: {fmt([w, h])}", f"R_rect_{cam}: {fmt(np.eye(3))}", f"P_rect_{cam}: {fmt(P)}"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


def _export_train(store, ok_rows: list[dict], outdir: Path) -> int:
    """KITTI training layout (see export_store_to_kitti). One synthetic drive per shard, frame = row; one
    synthetic date per distinct K (a raw-data date folder has one calibration)."""
    import datetime as _dt

    kind = str((store.attrs.get("teacher") or {}).get("output_kind", "disparity"))
    dates: dict[bytes, str] = {}
    n = 0
    for r in ok_rows:
        a = store.read_sample(r["index"])
        K = np.asarray(a["K"], np.float32)
        if K.tobytes() not in dates:
            day = _dt.date(2000, 1, 1) + _dt.timedelta(days=len(dates))
            dates[K.tobytes()] = date = day.strftime("%Y_%m_%d")
            write_calib_cam_to_cam(outdir / "raw" / date / "calib_cam_to_cam.txt", K, a["rgb"].shape[:2])
        date = dates[K.tobytes()]
        drive = f"{date}_drive_{int(r['shard']):04d}_sync"
        frame = f"{int(r['row']):010d}.png"
        write_depth_png(outdir / "data_depth_annotated" / "train" / drive / "proj_depth" / "groundtruth" / "image_02"
                        / frame, a["depth"])
        write_depth_png(outdir / "data_depth_velodyne" / "train" / drive / "proj_depth" / "velodyne_raw" / "image_02"
                        / frame, a["sparse"])
        raw = outdir / "raw" / date / drive / "image_02"
        write_rgb_png(raw / "data" / frame, a["rgb"])
        disp = raw / "disp" / frame
        disp.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(disparity_to_uint8(a["teacher_output"], kind), mode="L").save(disp, format="PNG")
        n += 1
    return n


def export_store_to_kitti(store_path: str | Path, outdir: str | Path, layout: str = "val_selection_cropped") -> dict:
    """The ok samples of a store in a KITTI-DC layout. Returns counts.

    * ``val_selection_cropped`` (default): rgb -> image, sparse -> velodyne_raw, depth (dense, teacher-derived)
      -> groundtruth_depth, K -> intrinsics.
    * ``train``: the training layout BP-Net / DMD3C-style code reads, with one synthetic drive per shard
      (``<date>_drive_<shard>_sync``, frame = row): ``data_depth_annotated/train/<drive>/proj_depth/groundtruth/
      image_02/`` (depth), ``data_depth_velodyne/train/<drive>/proj_depth/velodyne_raw/image_02/`` (sparse),
      ``raw/<date>/<drive>/image_02/data/`` (rgb), ``raw/<date>/<drive>/image_02/disp/`` (teacher disparity,
      8-bit, see disparity_to_uint8) and ``raw/<date>/calib_cam_to_cam.txt`` (P_rect_02 = [K | 0]).
    """
    from storage.store import DatasetStore

    if layout not in EXPORT_LAYOUTS:
        raise InputError(f"{outdir}: unknown KITTI layout {layout!r}; expected one of {', '.join(EXPORT_LAYOUTS)}")
    store = DatasetStore.open(store_path)
    table = store.manifest()
    rows = table.select(["index", "shard", "row", "sample_id", "status"]).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    if layout == "train":
        n = _export_train(store, ok, Path(outdir))
        return {"outdir": str(outdir), "layout": layout, "exported": n, "skipped": len(rows) - len(ok),
                "samples": len(rows)}

    def samples() -> Iterator[dict]:
        for r in ok:
            a = store.read_sample(r["index"])
            yield {"name": f"{r['sample_id']}_image_{r['index']:010d}_image_02", "rgb": a["rgb"],
                   "sparse": a["sparse"], "gt": a["depth"], "K": a["K"]}

    images = write_kitti_dc(outdir, samples())
    return {"outdir": str(outdir), "layout": layout, "exported": len(images), "skipped": len(rows) - len(ok),
            "samples": len(rows)}


def crop_kitti(array: np.ndarray, crop: tuple[int, int] = KITTI_CROP, *, source: str | Path = "image"
               ) -> tuple[np.ndarray, int, int]:
    """Bottom ``crop[0]`` rows x central ``crop[1]`` columns -> (cropped, y0, x0); source names it in errors."""
    h, w = array.shape[:2]
    ch, cw = crop
    if h < ch or w < cw:
        raise InputError(f"{source}: {h}x{w} is smaller than the KITTI crop {ch}x{cw}")
    y0, x0 = h - ch, (w - cw) // 2
    return array[y0:, x0:x0 + cw], y0, x0


def kitti_dc_from_gt_dir(rgb_dir: str | Path, depth_dir: str | Path, outdir: str | Path, K: np.ndarray, *,
                         crop: bool = True, n_lines: int = 64, seed: int = 0) -> Path:
    """Folder of RGB + semi-dense GT depth PNGs (same stems) -> val_selection_cropped directory at outdir.

    Sparse input = sparsify_scanlines(gt, n_lines, seed=derive_seed(seed, stem)); with crop=True every frame
    is cut to KITTI's benchmark crop and K's principal point moves with it. Returns outdir.
    """
    rgb_dir, depth_dir, outdir = Path(rgb_dir), Path(depth_dir), Path(outdir)
    for d in (rgb_dir, depth_dir):
        if not d.is_dir():
            raise InputError(f"{d}: no such directory")
    images = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not images:
        raise InputError(f"{rgb_dir}: no images")
    K = np.asarray(K, np.float32).reshape(3, 3)

    def samples() -> Iterator[dict]:
        for img in images:
            depth_path = depth_dir / f"{img.stem}.png"
            if not depth_path.is_file():
                raise InputError(f"{depth_path}: missing depth for {img}")
            rgb, gt = read_rgb(img), read_depth_png(depth_path)
            if gt.shape != rgb.shape[:2]:
                raise InputError(f"{depth_path}: size {gt.shape[0]}x{gt.shape[1]} differs from {img} {rgb.shape[0]}x{rgb.shape[1]}")
            k = K.copy()
            if crop:
                rgb, y0, x0 = crop_kitti(rgb, source=img)
                gt, _, _ = crop_kitti(gt, source=depth_path)
                k[0, 2] -= x0
                k[1, 2] -= y0
            sparse = sparsify_scanlines(gt, n_lines=n_lines, seed=derive_seed(seed, img.stem))
            yield {"name": img.stem, "rgb": rgb, "sparse": sparse, "gt": gt, "K": k}

    write_kitti_dc(outdir, samples())
    return outdir
