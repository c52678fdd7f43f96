"""The dataset build configuration and the build's defaults, in one place.

``BuildConfig`` holds everything (besides inputs and teacher) that shapes a shard's bytes; ``RunDefaults``
holds how a build runs (batching, parallelism, outputs) without changing any byte. The flow signature
(``flows.build.build_dataset``, which the Prefect UI form comes from) and the CLI (``flows.cli_build``)
take their defaults from ``BUILD_DEFAULTS`` / ``RUN_DEFAULTS`` instead of repeating them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

from storage.pngio import MAX_DEPTH_M
from tasks.errors import InputError
from tasks.provenance import stable_hash
from tasks.sensors import list_profiles

# KITTI's camera 2: fx = 721.5 px over a 1242 px wide image. Photos have no calibration, so the canvas
# gets a KITTI-like horizontal field of view unless the user sets fx.
KITTI_FOCAL_RATIO = 721.5377 / 1242.0

# Typed choices, so the Prefect UI shows dropdowns. The sensor names are the built-in profiles
# (tasks/sensors/*.yaml); a profile *file* is passed separately (flow: ``sensor_file``; CLI: ``--sensor PATH``).
SensorName = Literal[tuple(list_profiles())]  # type: ignore[valid-type]
Backend = Literal["fast", "embree", "pyrender"]
Runner = Literal["thread", "process", "dask"]
BACKENDS: tuple[str, ...] = get_args(Backend)
RUNNERS: tuple[str, ...] = get_args(Runner)


@dataclass(frozen=True)
class BuildConfig:
    height: int = 352  # canvas rows (KITTI depth-completion crop)
    width: int = 1216  # canvas columns
    fx: float | None = None  # focal length in pixels on the canvas; None = KITTI-like (0.581 * width)
    sensor: str = "hdl64e_kitti"  # built-in profile name or path to a profile file
    backend: str = "fast"  # ray-cast backend: fast | embree | pyrender
    see_through: bool = False  # keep LiDAR returns hidden from the camera behind foreground edges
    samples_per_image: int = 1  # variants per image (own seed: depth policy, sensor jitter, noise, drops)
    # samples per shard = the unit one task writes whole. 64 samples of 352x1216 make shard files of tens of
    # MB and keep a million-image build at ~16k shards (two task runs each), while a shard in flight stays a
    # few hundred MB of memory per worker.
    shard_size: int = 64
    seed: int = 0
    near_m: tuple[float, float] = (2.0, 5.0)  # depth policy: sampled depth of the near percentile
    far_m: tuple[float, float] = (40.0, 80.0)  # depth policy: sampled depth of the far percentile
    max_depth_m: float = 120.0
    mesh_ratio_threshold: float = 1.2  # cut mesh triangles across depth ratios above this

    def __post_init__(self) -> None:
        # The store keeps depth as KITTI uint16 (metres x 256): nothing beyond 65535 / 256 m fits.
        if not 0 < self.max_depth_m <= MAX_DEPTH_M:
            raise InputError(f"max_depth_m must be in (0, {MAX_DEPTH_M:.3f}] m (the KITTI uint16 depth "
                             f"the store keeps), got {self.max_depth_m}")

    @property
    def focal(self) -> float:
        return float(self.fx) if self.fx else KITTI_FOCAL_RATIO * self.width

    def to_dict(self) -> dict:
        d = asdict(self)
        d["near_m"], d["far_m"] = list(self.near_m), list(self.far_m)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BuildConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("near_m", "far_m"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)

    def hash(self) -> str:
        """Every field changes shard bytes: used in shard keys and store compatibility checks."""
        return stable_hash(self.to_dict())


@dataclass(frozen=True)
class RunDefaults:
    """How a build runs; none of these changes a stored byte (tested: any runner/worker count, same shards)."""

    # Images per teacher batch. Batches are padded to this size, so an image's output bits never depend on
    # its batch-mates; large batches keep a GPU busy, and on a CPU cost nothing extra per image.
    teacher_batch_size: int = 8
    runner: str = "thread"
    # Simulation processes beside the teacher (thread runner only); None = one per CPU core.
    sim_workers: int | None = None
    previews: int = 4


BUILD_DEFAULTS = BuildConfig()
RUN_DEFAULTS = RunDefaults()
