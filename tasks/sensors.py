"""LiDAR sensor profiles: beam layout, range limits, noise, drop model and mount pose, read from data files.

Built-in profiles live in tasks/sensors/<name>.yaml; a user adds one by writing a YAML or TOML file with
the same keys and passing its path. Keys (see tasks/sensors/hdl64e_kitti.yaml for a commented example):

    name, description
    elevations_deg       spinning sensors: a list of beam elevations (deg, + = up), or
                         {uniform: {from, to, count}} or {blocks: [{from, to, count}, ...]}
    azimuth_step_deg     spinning sensors: horizontal angle between firings
    vertical_offsets_m   spinning sensors, optional: height of each beam's origin above the sensor origin
                         along the LiDAR's z axis (one number for all beams, or one per beam); real heads
                         stack their lasers, e.g. the HDL-64E's upper block fires ~0.2 m above its origin
    pattern              instead of the two above, a scan-pattern generator, e.g. {type: rosette, ...}
    min_range_m, max_range_m, range_noise_std_m
    drop                 {random, grazing_deg, grazing_max, far_start_m, far_max}
    detection            optional link budget {range_m, reflectance_quantiles}: a return needs a reflectance of
                         at least (range / range_m)^2 times the median one; reflectance_quantiles are the sensor's
                         reported reflectances of near returns divided by their median, at 0, 5, ..., 100 %
                         (so the detection probability at range r is the share of them >= (r / range_m)^2)
    mount                {translation_m: [x, y, z] LiDAR origin in the CAMERA frame,
                          rotation_deg: [roll, pitch, yaw] about the LiDAR's x, y, z,
                          jitter_translation_m, jitter_rotation_deg: +- uniform ranges drawn per sample}
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tasks.errors import GeometryError

PROFILE_DIR = Path(__file__).resolve().parent / "sensors"
_DROP_DEFAULTS = {"random": 0.0, "grazing_deg": 90.0, "grazing_max": 0.0, "far_start_m": float("inf"), "far_max": 0.0}
_MOUNT_DEFAULTS = {"translation_m": [0.0, 0.0, 0.0], "rotation_deg": [0.0, 0.0, 0.0],
                   "jitter_translation_m": 0.0, "jitter_rotation_deg": 0.0}
DETECTION_LEVELS = np.linspace(0.0, 1.0, 21)  # quantile levels of detection.reflectance_quantiles
_ROSETTE_KEYS = ("points_per_frame", "frame_time_s", "lasers", "prism_rates_hz", "prism_weights", "fov_deg")


@dataclass(frozen=True, eq=False)
class SensorProfile:
    """One LiDAR model. Exactly one of `elevations_deg` (spinning) or `pattern` (generator spec) is set."""

    name: str
    elevations_deg: np.ndarray | None
    azimuth_step_deg: float | None
    min_range_m: float
    max_range_m: float
    range_noise_std_m: float
    drop: dict[str, float]
    mount: dict[str, Any]
    description: str = ""
    pattern: dict[str, Any] | None = None
    source: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    vertical_offsets_m: np.ndarray | None = None
    detection: dict[str, Any] | None = None

    @property
    def n_beams(self) -> int:
        return len(self.elevations_deg) if self.elevations_deg is not None else int(self.pattern["lasers"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (for cache keys, the store's config and the manifest). Optional keys appear
        only when set, so profiles without them describe (and hash) exactly as before."""
        out = {
            "name": self.name,
            "elevations_deg": None if self.elevations_deg is None else [round(float(e), 6) for e in self.elevations_deg],
            "azimuth_step_deg": self.azimuth_step_deg,
            "pattern": self.pattern,
            "min_range_m": self.min_range_m,
            "max_range_m": self.max_range_m,
            "range_noise_std_m": self.range_noise_std_m,
            "drop": self.drop,
            "mount": self.mount,
        }
        if self.vertical_offsets_m is not None:
            out["vertical_offsets_m"] = [round(float(v), 6) for v in self.vertical_offsets_m]
        if self.detection is not None:
            out["detection"] = self.detection
        return out


def list_profiles() -> list[str]:
    """Names of the built-in profiles."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def _number(raw: dict, key: str, where: str, *, default: float | None = None, positive: bool = False) -> float:
    if key not in raw:
        if default is None:
            raise GeometryError(f"{where}: missing key {key!r}")
        return float(default)
    try:
        value = float(raw[key])
    except (TypeError, ValueError):
        raise GeometryError(f"{where}: {key!r} must be a number, got {raw[key]!r}") from None
    if not np.isfinite(value) and value != float("inf") or value < 0 or (positive and value <= 0):
        raise GeometryError(f"{where}: {key!r} must be {'> 0' if positive else '>= 0'}, got {raw[key]!r}")
    return value


def _elevations(spec: Any, where: str) -> np.ndarray:
    def span(block: Any) -> np.ndarray:
        if not isinstance(block, dict) or not {"from", "to", "count"} <= set(block):
            raise GeometryError(f"{where}: an elevation block needs from, to, count; got {block!r}")
        count = int(block["count"])
        if count < 1:
            raise GeometryError(f"{where}: elevation block count must be >= 1, got {count}")
        return np.linspace(float(block["from"]), float(block["to"]), count)

    if isinstance(spec, list):
        el = np.asarray(spec, dtype=np.float64)
    elif isinstance(spec, dict) and "uniform" in spec:
        el = span(spec["uniform"])
    elif isinstance(spec, dict) and "blocks" in spec:
        el = np.concatenate([span(b) for b in spec["blocks"]])
    else:
        raise GeometryError(f"{where}: elevations_deg must be a list, {{uniform: ...}} or {{blocks: [...]}}")
    if el.ndim != 1 or len(el) == 0 or not np.isfinite(el).all() or np.abs(el).max() >= 90:
        raise GeometryError(f"{where}: elevations_deg must be finite angles in (-90, 90)")
    return el


def _detection(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict) or set(spec) != {"range_m", "reflectance_quantiles"}:
        raise GeometryError(f"{where}: detection needs exactly range_m and reflectance_quantiles")
    range_m = _number(spec, "range_m", where + " detection", positive=True)
    try:
        q = np.asarray(spec["reflectance_quantiles"], dtype=np.float64)
    except (TypeError, ValueError):
        raise GeometryError(f"{where}: detection reflectance_quantiles must be numbers") from None
    if q.shape != DETECTION_LEVELS.shape or not np.isfinite(q).all() or (q < 0).any() or (np.diff(q) < 0).any():
        raise GeometryError(f"{where}: detection reflectance_quantiles must be {len(DETECTION_LEVELS)} non-decreasing "
                            f"numbers >= 0 (the 0, 5, ..., 100 % quantiles)")
    if not np.isfinite(range_m):
        raise GeometryError(f"{where}: detection range_m must be finite")
    return {"range_m": range_m, "reflectance_quantiles": [round(float(v), 4) for v in q]}


def _pattern(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict) or spec.get("type") != "rosette":
        raise GeometryError(f"{where}: pattern must be a mapping with type: rosette")
    missing = [k for k in _ROSETTE_KEYS if k not in spec]
    if missing:
        raise GeometryError(f"{where}: rosette pattern is missing {', '.join(missing)}")
    out = {"type": "rosette", "points_per_frame": int(spec["points_per_frame"]), "lasers": int(spec["lasers"]),
           "frame_time_s": float(spec["frame_time_s"]),
           "prism_rates_hz": [float(x) for x in spec["prism_rates_hz"]],
           "prism_weights": [float(x) for x in spec["prism_weights"]],
           "fov_deg": [float(x) for x in spec["fov_deg"]]}
    if out["points_per_frame"] < 1 or out["lasers"] < 1 or out["frame_time_s"] <= 0:
        raise GeometryError(f"{where}: rosette needs points_per_frame >= 1, lasers >= 1, frame_time_s > 0")
    if len(out["prism_rates_hz"]) != len(out["prism_weights"]) or len(out["fov_deg"]) != 2:
        raise GeometryError(f"{where}: rosette needs one weight per prism rate and fov_deg [horizontal, vertical]")
    if not all(0 < f < 180 for f in out["fov_deg"]):
        raise GeometryError(f"{where}: rosette fov_deg must be in (0, 180)")
    return out


def parse_profile(raw: Any, where: str, source: Path | None = None) -> SensorProfile:
    """Build a SensorProfile from a parsed mapping; `where` names the file in error messages."""
    if not isinstance(raw, dict):
        raise GeometryError(f"{where}: a sensor profile must be a mapping of keys, got {type(raw).__name__}")
    name = str(raw.get("name") or (source.stem if source else ""))
    if not name:
        raise GeometryError(f"{where}: missing key 'name'")
    has_el, has_pat = "elevations_deg" in raw, "pattern" in raw
    if has_el == has_pat:
        raise GeometryError(f"{where}: give exactly one of elevations_deg (spinning) or pattern (generator)")
    elevations = _elevations(raw["elevations_deg"], where) if has_el else None
    step = _number(raw, "azimuth_step_deg", where, positive=True) if has_el else None
    pattern = _pattern(raw["pattern"], where) if has_pat else None
    offsets = None
    if raw.get("vertical_offsets_m") is not None:
        if not has_el:
            raise GeometryError(f"{where}: vertical_offsets_m needs elevations_deg (a spinning sensor)")
        try:
            offsets = np.broadcast_to(np.asarray(raw["vertical_offsets_m"], dtype=np.float64), elevations.shape).copy()
        except (TypeError, ValueError):
            raise GeometryError(f"{where}: vertical_offsets_m must be one number or one per beam "
                                f"({len(elevations)})") from None
        if not np.isfinite(offsets).all() or np.abs(offsets).max() > 5.0:
            raise GeometryError(f"{where}: vertical_offsets_m must be finite and within +-5 m")
    detection = None
    if raw.get("detection") is not None:
        if not has_el:
            raise GeometryError(f"{where}: detection needs elevations_deg (a spinning sensor)")
        detection = _detection(raw["detection"], where)
    min_r = _number(raw, "min_range_m", where, default=0.0)
    max_r = _number(raw, "max_range_m", where, positive=True)
    if max_r <= min_r:
        raise GeometryError(f"{where}: max_range_m ({max_r}) must exceed min_range_m ({min_r})")
    noise = _number(raw, "range_noise_std_m", where, default=0.0)
    drop_raw = raw.get("drop") or {}
    mount_raw = raw.get("mount") or {}
    if not isinstance(drop_raw, dict) or not isinstance(mount_raw, dict):
        raise GeometryError(f"{where}: drop and mount must be mappings")
    unknown = set(drop_raw) - set(_DROP_DEFAULTS)
    if unknown:
        raise GeometryError(f"{where}: unknown drop keys {sorted(unknown)}; known: {sorted(_DROP_DEFAULTS)}")
    drop = {k: _number(drop_raw, k, where + " drop", default=v) for k, v in _DROP_DEFAULTS.items()}
    if drop["random"] > 1 or drop["grazing_max"] > 1 or drop["far_max"] > 1 or drop["grazing_deg"] > 90:
        raise GeometryError(f"{where}: drop probabilities must be <= 1 and grazing_deg <= 90")
    mount = dict(_MOUNT_DEFAULTS, **mount_raw)
    try:
        t = [float(x) for x in mount["translation_m"]]
        rot = [float(x) for x in mount["rotation_deg"]]
        mount = {"translation_m": t, "rotation_deg": rot,
                 "jitter_translation_m": float(mount["jitter_translation_m"]),
                 "jitter_rotation_deg": float(mount["jitter_rotation_deg"])}
    except (TypeError, ValueError):
        raise GeometryError(f"{where}: mount values must be numbers") from None
    if len(t) != 3 or len(rot) != 3 or not np.isfinite(t + rot).all():
        raise GeometryError(f"{where}: mount translation_m and rotation_deg need 3 finite numbers each")
    return SensorProfile(name=name, elevations_deg=elevations, azimuth_step_deg=step, min_range_m=min_r,
                         max_range_m=max_r, range_noise_std_m=noise, drop=drop, mount=mount,
                         description=str(raw.get("description", "")).strip(), pattern=pattern, source=source,
                         vertical_offsets_m=offsets, detection=detection)


def _read(path: Path) -> SensorProfile:
    try:
        text = path.read_text()
    except OSError as exc:
        raise GeometryError(f"{path}: cannot read sensor profile ({exc.strerror or exc})") from None
    try:
        raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GeometryError(f"{path}: malformed sensor profile ({first})") from None
    return parse_profile(raw, str(path), source=path)


@lru_cache(maxsize=64)
def _load_cached(key: str, stamp: tuple[int, int] = (0, 0)) -> SensorProfile:
    # stamp = (mtime_ns, size) of the file: an edited profile is re-read, never served stale from the cache.
    return _read(Path(key))


def _load_fresh(path: Path) -> SensorProfile:
    st = path.stat()
    return _load_cached(str(path), (st.st_mtime_ns, st.st_size))


def load_profile(name_or_path: str | Path) -> SensorProfile:
    """A built-in profile by name (see list_profiles()) or a profile file (.yaml/.yml/.toml) by path."""
    text = str(name_or_path)
    as_path = Path(text).expanduser()
    looks_like_path = isinstance(name_or_path, Path) or as_path.suffix.lower() in (".yaml", ".yml", ".toml") \
        or "/" in text or "\\" in text
    if looks_like_path:
        if not as_path.is_file():
            raise GeometryError(f"{as_path}: sensor profile file not found")
        return _load_fresh(as_path.resolve())
    builtin = PROFILE_DIR / f"{text}.yaml"
    if not builtin.is_file():
        raise GeometryError(f"unknown sensor profile {text!r}; known: {', '.join(list_profiles())} (or a path to a .yaml/.toml file)")
    return _load_fresh(builtin)
