"""Real LiDAR sweeps and camera/LiDAR calibration files: the on-disk formats, read into plain arrays.

Scans (``read_scan``), chosen by file name:

* ``*.pcd.bin`` - nuScenes: float32 x 5 per point (x, y, z, intensity, ring).
* ``*.bin`` - KITTI Velodyne: float32 x 4 per point (x, y, z, reflectance); no ring ids.
* ``*.npy`` - an N x 3, N x 4 (+ intensity) or N x 5 (+ ring) array; ``*.npz`` - the same under key
  ``data`` or ``points`` (or its only array), as in TRI's DGP/DDAD scenes.
* ``*.pcd`` - Point Cloud Library files, ``DATA ascii`` or ``DATA binary`` (``binary_compressed`` is refused
  with a clear message); fields x, y, z and optionally intensity and ring (also ``laser_id``/``line``).

Points stay in the LiDAR frame, exactly as stored, including the "no return" markers near the origin that
some exporters keep (nuScenes keeps every firing); tasks.calibrate counts them, tasks.fidelity skips them.

Calibration (``read_calib``) gives the camera intrinsics K and camera_from_lidar (4 x 4):

* JSON with ``cam2img`` (3 x 3) and ``lidar2cam`` (4 x 4) - mmdetection3d's demo layout (nuScenes);
  ``K`` / ``cam_from_lidar`` are accepted as synonyms; optional ``image`` (file name beside the JSON).
* DGP/DDAD calibration JSON (``names``, ``intrinsics``, ``extrinsics`` as quaternion + translation of each
  sensor in the vehicle frame): pass ``camera=`` to pick one (default: the first camera).
* KITTI text: ``P2`` (or ``P_rect_02``), ``Tr_velo_to_cam`` (or ``R``/``T`` lines of calib_velo_to_cam.txt)
  and ``R0_rect`` (or ``R_rect_00``) when present, in one file (object-benchmark style) or several files
  passed together.

Every malformed file raises ``tasks.errors.InputError`` whose one-line message names the file and the reason.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.errors import InputError

SCAN_SUFFIXES = (".pcd.bin", ".bin", ".npy", ".npz", ".pcd")
_RING_FIELDS = ("ring", "laser_id", "line", "ring_id")
_INTENSITY_FIELDS = ("intensity", "reflectance", "i")
_PCD_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4",
              ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4", ("U", 8): "<u8", ("I", 8): "<i8"}


@dataclass
class LidarSweep:
    """One sweep in the LiDAR frame. points: (N, 3) float64 metres; intensity: (N,) float32 or None;
    ring: (N,) int32 beam index or None (the file has no ring ids); source: the file it came from."""

    points: np.ndarray
    intensity: np.ndarray | None
    ring: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.points)


@dataclass
class CameraCalib:
    """K: (3, 3) float64 pinhole intrinsics; cam_from_lidar: (4, 4) float64 rigid transform taking LiDAR
    points into the camera's OpenCV frame (x right, y down, z forward); image: the photo named by the
    calibration (absolute path) when it names one; source: the calibration file(s)."""

    K: np.ndarray
    cam_from_lidar: np.ndarray
    image: Path | None
    source: str


# ---------------------------------------------------------------------------------------------- scans
def _sweep(arr: np.ndarray, label: str, *, ring_col: int | None) -> LidarSweep:
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.shape[1] < 3 or arr.shape[0] == 0:
        raise InputError(f"{label}: expected an N x 3, N x 4 or N x 5 point array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{label}: point array has non-numeric dtype {arr.dtype}")
    pts = arr[:, :3].astype(np.float64)
    if not np.isfinite(pts).all():
        raise InputError(f"{label}: {int((~np.isfinite(pts)).any(1).sum())} points have non-finite coordinates")
    intensity = arr[:, 3].astype(np.float32) if arr.shape[1] >= 4 else None
    ring = None
    if ring_col is not None and arr.shape[1] > ring_col:
        r = arr[:, ring_col]
        if not np.isfinite(r).all() or (r < 0).any() or (np.abs(r - np.round(r)) > 1e-3).any() or r.max() > 1023:
            raise InputError(f"{label}: column {ring_col} is not a ring index (non-negative integers < 1024)")
        ring = np.round(r).astype(np.int32)
    return LidarSweep(points=pts, intensity=intensity, ring=ring, source=label)


def _raw_floats(path: Path, columns: int) -> np.ndarray:
    data = path.read_bytes()
    if len(data) == 0:
        raise InputError(f"{path}: zero-byte scan file")
    if len(data) % (4 * columns):
        raise InputError(f"{path}: size {len(data)} bytes is not a multiple of {columns} float32 per point "
                         f"({4 * columns} bytes); not a {'nuScenes .pcd.bin' if columns == 5 else 'KITTI .bin'} scan?")
    return np.frombuffer(data, dtype="<f4").reshape(-1, columns)


def _pcd_header(data: bytes, path: Path) -> tuple[dict[str, list[str]], int]:
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise InputError(f"{path}: PCD header has no DATA line")
        line = data[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            return header, pos
        if len(header) > 32:
            raise InputError(f"{path}: not a PCD file (no DATA line in the header)")


def _read_pcd(path: Path) -> LidarSweep:
    data = path.read_bytes()
    if not data:
        raise InputError(f"{path}: zero-byte scan file")
    header, offset = _pcd_header(data, path)
    try:
        fields = [f.lower() for f in header["FIELDS"]]
        sizes = [int(s) for s in header["SIZE"]]
        types = [t.upper() for t in header["TYPE"]]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(fields))]
        n = int(header.get("POINTS", [0])[0]) or int(header["WIDTH"][0]) * int(header.get("HEIGHT", ["1"])[0])
        mode = header["DATA"][0].lower()
    except (KeyError, ValueError, IndexError) as exc:
        raise InputError(f"{path}: malformed PCD header ({exc.__class__.__name__}: {exc})") from None
    if not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise InputError(f"{path}: PCD header FIELDS/SIZE/TYPE/COUNT have different lengths")
    if not {"x", "y", "z"} <= set(fields):
        raise InputError(f"{path}: PCD has no x, y, z fields (fields: {' '.join(fields)})")
    names = []
    for f, c in zip(fields, counts):
        names += [f] if c == 1 else [f"{f}_{k}" for k in range(c)]
    if mode == "ascii":
        try:
            table = np.loadtxt(data[offset:].decode("ascii").splitlines(), dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise InputError(f"{path}: malformed ASCII PCD data ({exc})") from None
        if table.shape[1] != len(names) or table.shape[0] != n:
            raise InputError(f"{path}: ASCII PCD data is {table.shape[0]} x {table.shape[1]}, header says "
                             f"{n} x {len(names)}")
        cols = {name: table[:, k] for k, name in enumerate(names)}
    elif mode == "binary":
        dtype = []
        for f, s, t, c in zip(fields, sizes, types, counts):
            if (t, s) not in _PCD_TYPES:
                raise InputError(f"{path}: PCD field {f} has unsupported type {t}{s}")
            dtype.append((f, _PCD_TYPES[(t, s)], (c,)) if c > 1 else (f, _PCD_TYPES[(t, s)]))
        dt = np.dtype(dtype)
        if len(data) - offset < n * dt.itemsize:
            raise InputError(f"{path}: binary PCD is truncated ({len(data) - offset} data bytes, header says "
                             f"{n} points x {dt.itemsize} bytes)")
        rec = np.frombuffer(data, dtype=dt, count=n, offset=offset)
        cols = {f: rec[f].astype(np.float64) for f in fields if rec[f].ndim == 1}
    else:
        raise InputError(f"{path}: PCD 'DATA {mode}' is not supported (use ascii or binary)")
    ring_name = next((f for f in _RING_FIELDS if f in cols), None)
    int_name = next((f for f in _INTENSITY_FIELDS if f in cols), None)
    stack = [cols["x"], cols["y"], cols["z"], cols[int_name] if int_name else np.zeros(n)]
    if ring_name:
        stack.append(cols[ring_name])
    sweep = _sweep(np.stack(stack, 1), str(path), ring_col=4 if ring_name else None)
    if not int_name:
        sweep.intensity = None
    return sweep


def read_scan(path: str | Path) -> LidarSweep:
    """One real sweep from a supported file (see the module docstring); InputError naming the file otherwise."""
    path = Path(path)
    name = path.name.lower()
    if not path.is_file():
        raise InputError(f"{path}: no such scan file")
    try:
        if name.endswith(".pcd.bin"):
            return _sweep(_raw_floats(path, 5), str(path), ring_col=4)
        if name.endswith(".bin"):
            return _sweep(_raw_floats(path, 4), str(path), ring_col=None)
        if name.endswith(".npy") or name.endswith(".npz"):
            try:
                loaded = np.load(path, allow_pickle=False)
            except (ValueError, EOFError) as exc:
                raise InputError(f"{path}: not a readable NumPy file ({str(exc).splitlines()[0]})") from None
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    keys = list(loaded.keys())
                    key = next((k for k in ("data", "points") if k in keys), keys[0] if len(keys) == 1 else None)
                    if key is None:
                        raise InputError(f"{path}: .npz has arrays {keys}; expected 'data' or 'points'")
                    loaded = loaded[key]
            if loaded.dtype.names:  # structured array (x, y, z, ...)
                names = loaded.dtype.names
                if not {"x", "y", "z"} <= set(names):
                    raise InputError(f"{path}: structured array has no x, y, z fields ({', '.join(names)})")
                ring_name = next((f for f in _RING_FIELDS if f in names), None)
                int_name = next((f for f in _INTENSITY_FIELDS if f in names), None)
                cols = [loaded[c].astype(np.float64) for c in ("x", "y", "z")]
                cols.append(loaded[int_name].astype(np.float64) if int_name else np.zeros(len(loaded)))
                if ring_name:
                    cols.append(loaded[ring_name].astype(np.float64))
                return _sweep(np.stack(cols, 1), str(path), ring_col=4 if ring_name else None)
            return _sweep(loaded, str(path), ring_col=4)
        if name.endswith(".pcd"):
            return _read_pcd(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    raise InputError(f"{path}: unknown scan format (expected one of {', '.join(SCAN_SUFFIXES)})")


def write_scan_npy(path: str | Path, sweep: LidarSweep) -> Path:
    """Write a sweep as an N x 5 float32 .npy (x, y, z, intensity, ring; -1 ring when unknown) - for fixtures."""
    path = Path(path)
    n = len(sweep)
    arr = np.column_stack([sweep.points, sweep.intensity if sweep.intensity is not None else np.zeros(n),
                           sweep.ring if sweep.ring is not None else np.full(n, -1)]).astype(np.float32)
    if sweep.ring is None:
        arr = arr[:, :4]
    np.save(path, arr)
    return path


# ---------------------------------------------------------------------------------------- calibration
def _matrix(value, shape: tuple[int, int], label: str, key: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{label}: {key} is not a numeric matrix") from None
    if m.size == shape[0] * shape[1]:
        m = m.reshape(shape)
    if m.shape != shape or not np.isfinite(m).all():
        raise InputError(f"{label}: {key} must be a finite {shape[0]}x{shape[1]} matrix, got shape {m.shape}")
    return m


def _check_rigid(T: np.ndarray, label: str) -> np.ndarray:
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or not np.allclose(T[3], (0, 0, 0, 1), atol=1e-6):
        raise InputError(f"{label}: camera_from_lidar is not a rigid transform (rotation not orthonormal "
                         f"or last row not 0 0 0 1)")
    # Re-orthonormalise (files store 6-8 digits) so downstream pose checks stay tight.
    u, _, vt = np.linalg.svd(R)
    T = T.copy()
    T[:3, :3] = u @ vt
    return T


def _check_K(K: np.ndarray, label: str) -> np.ndarray:
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], (0, 0, 1)):
        raise InputError(f"{label}: intrinsics must have fx, fy > 0 and last row 0 0 1")
    return K


def _quat_pose(entry: dict, label: str) -> np.ndarray:
    try:
        q = entry["rotation"]
        t = entry["translation"]
        w, x, y, z = (float(q[k]) for k in ("qw", "qx", "qy", "qz"))
        tr = [float(t[k]) for k in ("x", "y", "z")]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{label}: extrinsics need rotation {{qw,qx,qy,qz}} and translation {{x,y,z}}") from None
    n = np.sqrt(w * w + x * x + y * y + z * z)
    if not np.isfinite(n) or n < 1e-9:
        raise InputError(f"{label}: extrinsic quaternion has zero length")
    w, x, y, z = w / n, x / n, y / n, z / n
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, tr
    return T


def _calib_json(path: Path, camera: str | None) -> CameraCalib:
    label = str(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{label}: malformed JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{label}: calibration JSON must be an object")
    if "names" in raw and "extrinsics" in raw and "intrinsics" in raw:  # DGP / DDAD
        names = list(raw["names"])
        cams = [n for n in names if not n.upper().startswith("LIDAR")]
        lidars = [n for n in names if n.upper().startswith("LIDAR")]
        if not lidars or not cams:
            raise InputError(f"{label}: DGP calibration needs a LIDAR and a camera entry (names: {names})")
        cam = camera or cams[0]
        if cam not in names:
            raise InputError(f"{label}: no camera {cam!r} (cameras: {', '.join(cams)})")
        i, j = names.index(cam), names.index(lidars[0])
        intr = raw["intrinsics"][i]
        try:
            K = np.array([[float(intr["fx"]), float(intr.get("skew", 0.0)), float(intr["cx"])],
                          [0.0, float(intr["fy"]), float(intr["cy"])], [0.0, 0.0, 1.0]])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{label}: intrinsics of {cam} need fx, fy, cx, cy") from None
        veh_from_cam = _quat_pose(raw["extrinsics"][i], label)
        veh_from_lidar = _quat_pose(raw["extrinsics"][j], label)
        T = np.linalg.inv(veh_from_cam) @ veh_from_lidar
        return CameraCalib(K=_check_K(K, label), cam_from_lidar=_check_rigid(T, label), image=None, source=label)
    k_key = next((k for k in ("cam2img", "K", "intrinsics") if k in raw), None)
    t_key = next((k for k in ("lidar2cam", "cam_from_lidar") if k in raw), None)
    if k_key is None or t_key is None:
        raise InputError(f"{label}: calibration JSON needs cam2img (3x3) and lidar2cam (4x4); keys: {sorted(raw)}")
    K = _matrix(raw[k_key], (3, 3), label, k_key)
    T = _matrix(raw[t_key], (4, 4), label, t_key)
    image = (path.parent / str(raw["image"])) if raw.get("image") else None
    return CameraCalib(K=_check_K(K, label), cam_from_lidar=_check_rigid(T, label), image=image, source=label)


_KITTI_LINE = re.compile(r"^\s*([A-Za-z_0-9]+)\s*:\s*(.*)$")


def _calib_kitti(paths: list[Path], camera: str | None) -> CameraCalib:
    label = ", ".join(str(p) for p in paths)
    entries: dict[str, np.ndarray] = {}
    for p in paths:
        for line in p.read_text().splitlines():
            m = _KITTI_LINE.match(line)
            if not m:
                continue
            try:
                entries[m.group(1)] = np.array(m.group(2).split(), dtype=np.float64)
            except ValueError:
                continue  # calib_time and other non-numeric lines
    cam = (camera or "2")[-1]
    P = entries.get(f"P{cam}", entries.get(f"P_rect_0{cam}"))
    if P is None:
        raise InputError(f"{label}: no P{cam} / P_rect_0{cam} line (KITTI projection matrix of camera {cam})")
    P = _matrix(P, (3, 4), label, f"P{cam}")
    if "Tr_velo_to_cam" in entries:
        Tv = _matrix(entries["Tr_velo_to_cam"], (3, 4), label, "Tr_velo_to_cam")
    elif "R" in entries and "T" in entries:
        Tv = np.column_stack([_matrix(entries["R"], (3, 3), label, "R"), _matrix(entries["T"], (3, 1), label, "T")])
    else:
        raise InputError(f"{label}: no Tr_velo_to_cam (or R/T of calib_velo_to_cam.txt) line")
    R0 = entries.get("R0_rect", entries.get("R_rect_00"))
    rect = np.eye(4)
    if R0 is not None:
        rect[:3, :3] = _matrix(R0, (3, 3), label, "R0_rect")
    velo = np.eye(4)
    velo[:3, :] = Tv
    K = P[:, :3].copy()
    # P = K [I | t]: the rectified camera X sits t = K^-1 P[:, 3] from camera 0 (about 6 cm for camera 2).
    shift = np.eye(4)
    shift[:3, 3] = np.linalg.solve(K, P[:, 3])
    T = shift @ rect @ velo
    return CameraCalib(K=_check_K(K, label), cam_from_lidar=_check_rigid(T, label), image=None, source=label)


def read_calib(paths: str | Path | list[str | Path], *, camera: str | None = None) -> CameraCalib:
    """Camera intrinsics + camera_from_lidar from one JSON file or one/several KITTI text files."""
    items = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    if not items:
        raise InputError("no calibration file given")
    for p in items:
        if not p.is_file():
            raise InputError(f"{p}: no such calibration file")
        if p.stat().st_size == 0:
            raise InputError(f"{p}: zero-byte calibration file")
    try:
        if len(items) == 1 and items[0].suffix.lower() == ".json":
            return _calib_json(items[0], camera)
        return _calib_kitti(items, camera)
    except UnicodeDecodeError:
        raise InputError(f"{items[0]}: calibration file is not text") from None
    except OSError as exc:
        raise InputError(f"{items[0]}: cannot read ({exc.strerror or exc})") from None
