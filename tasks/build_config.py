"""The dataset build configuration: everything (besides inputs and teacher) that shapes a shard's bytes."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from tasks.provenance import stable_hash

# KITTI's camera 2: fx = 721.5 px over a 1242 px wide image. Photos have no calibration, so the canvas
# gets a KITTI-like horizontal field of view unless the user sets fx.
KITTI_FOCAL_RATIO = 721.5377 / 1242.0


@dataclass(frozen=True)
class BuildConfig:
    height: int = 352  # canvas rows (KITTI depth-completion crop)
    width: int = 1216  # canvas columns
    fx: float | None = None  # focal length in pixels on the canvas; None = KITTI-like (0.581 * width)
    sensor: str = "hdl64e_kitti"  # built-in profile name or path to a profile file
    backend: str = "fast"  # ray-cast backend: fast | embree | pyrender
    see_through: bool = False  # keep LiDAR returns hidden from the camera behind foreground edges
    samples_per_image: int = 1  # variants per image (own seed: depth policy, sensor jitter, noise, drops)
    shard_size: int = 8  # samples per shard = the unit one task writes whole
    seed: int = 0
    near_m: tuple[float, float] = (2.0, 5.0)  # depth policy: sampled depth of the near percentile
    far_m: tuple[float, float] = (40.0, 80.0)  # depth policy: sampled depth of the far percentile
    max_depth_m: float = 120.0
    mesh_ratio_threshold: float = 1.2  # cut mesh triangles across depth ratios above this

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
