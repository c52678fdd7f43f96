"""ONNX monocular-depth teacher runtime (onnxruntime session wrapper).

The teacher follows the Depth Anything V2 ONNX convention (DESIGN.md §4): input ``pixel_values``
float [B,3,H,W], RGB in [0,1] normalised with ImageNet mean/std, H and W multiples of 14 with the short
side usually 518; output ``predicted_depth`` [B,H,W] (relative disparity, larger = nearer) or metric
depth in metres. ``Teacher.predict`` returns the *raw* output resized back to each image's full
resolution; turning disparity into metric depth is ``tasks.depth_policy``'s job.

Names, output kind and preferred short side are read from the model itself (ONNX ``metadata_props``
``monolidar.output_kind`` / ``monolidar.short_side``) so a model file explains how to run it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.conventions import imagenet_normalise_np
from tasks.errors import TeacherError
from tasks.provenance import sha256_file, stable_hash

DEFAULT_TEACHER = Path(__file__).resolve().parent / "weights" / "monolidar_teacher_small.onnx"

OUTPUT_KINDS = ("disparity", "metric")
META_OUTPUT_KIND = "monolidar.output_kind"
META_SHORT_SIDE = "monolidar.short_side"
DEFAULT_INPUT_NAME = "pixel_values"
DEFAULT_OUTPUT_NAME = "predicted_depth"
DEFAULT_SHORT_SIDE = 518
PATCH = 14


# Preferred execution providers, best first; only those onnxruntime reports as available are used.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_PROBE_SIZE = 4 * PATCH  # small enough to be cheap, large enough for a ViT/DPT with 4 downsamplings


def default_teacher_path() -> Path:
    """The embedded teacher shipped with the package; TeacherError naming the path if it is absent."""
    if not DEFAULT_TEACHER.is_file():
        raise TeacherError(
            f"default teacher {DEFAULT_TEACHER} not found: train it (monolidar train-teacher) or pass --teacher PATH.onnx"
        )
    return DEFAULT_TEACHER


def choose_providers(requested: list[str] | None = None) -> list[str]:
    """Requested providers (or the preference order) filtered to what onnxruntime has, CPU as last resort."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = list(requested) if requested else list(PROVIDER_PREFERENCE)
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def snap_to_patch(value: float, multiple: int = PATCH) -> int:
    """Nearest multiple of ``multiple`` (at least one multiple), as DA-V2's ``ensure_multiple_of``."""
    return max(multiple, int(round(value / multiple)) * multiple)


def network_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Aspect-preserving size whose short side is ``short_side``, both sides snapped to multiples of 14."""
    scale = short_side / min(height, width)
    return snap_to_patch(height * scale), snap_to_patch(width * scale)


def resize_bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (B,h,w) float maps to (B,height,width), half-pixel centres, edge-clamped.

    Same sampling as torch ``interpolate(mode="bilinear", align_corners=False)`` without antialiasing:
    the teacher output is smooth and mostly upsampled, and exact arithmetic keeps this reproducible.
    """
    b, h, w = maps.shape
    if (h, w) == (height, width):
        return maps.astype(np.float32, copy=True)

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0.0, n_in - 1)
        i0 = np.floor(src).astype(np.intp)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, wy = axis(height, h)
    x0, x1, wx = axis(width, w)
    m = maps.astype(np.float32, copy=False)
    rows = m[:, y0, :] * (1.0 - wy)[None, :, None] + m[:, y1, :] * wy[None, :, None]
    return rows[:, :, x0] * (1.0 - wx) + rows[:, :, x1] * wx


def _as_batch(images: np.ndarray | list[np.ndarray]) -> np.ndarray:
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("predict() got an empty list of images")
        shapes = {np.shape(im) for im in images}
        if len(shapes) != 1:
            raise ValueError(f"predict() needs images of one size, got shapes {sorted(shapes)}")
        images = np.stack(images)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (B,H,W,3), got {images.dtype} {images.shape}")
    return images


class Teacher:
    """A monocular depth teacher backed by an onnxruntime session.

    Args:
        path: the .onnx file; None -> the embedded default teacher (``default_teacher_path()``).
        output_kind: "disparity" (relative inverse depth) or "metric" (metres); default from metadata.
        input_name / output_name: graph tensor names; default from the graph (see module docstring).
        short_side: network input short side (snapped to a multiple of 14); default from metadata or 518.
        providers: onnxruntime execution providers, best first; default TensorRT > CUDA > CPU.
        threads: intra-op threads for the session (None = onnxruntime's default).
        probe: run one small probe image at load time and reject models with non-finite output.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        output_kind: str | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
        short_side: int | None = None,
        providers: list[str] | None = None,
        threads: int | None = None,
        probe: bool = True,
    ) -> None:
        import onnxruntime as ort

        self._init_args: dict[str, Any] = dict(
            path=path, output_kind=output_kind, input_name=input_name, output_name=output_name,
            short_side=short_side, providers=providers, threads=threads, probe=probe,
        )
        self.path = Path(path) if path is not None else default_teacher_path()
        if not self.path.is_file():
            raise TeacherError(f"teacher model {self.path} not found")
        if self.path.stat().st_size == 0:
            raise TeacherError(f"teacher model {self.path} is empty (0 bytes)")
        self.sha256 = sha256_file(self.path)

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # keep provider fallback chatter off the console
        # Idle worker threads sleep instead of spinning: the build flow runs the teacher next to mesh and
        # ray-cast work on the same cores, where spinning threads only steal time.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=choose_providers(providers)
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise TeacherError(f"teacher model {self.path} is not a loadable ONNX file: {reason}") from exc
        self.providers = list(self._session.get_providers())
        meta = dict(self._session.get_modelmeta().custom_metadata_map or {})

        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        self.input_name = self._pick_name("input", input_name, inputs, DEFAULT_INPUT_NAME)
        self.output_name = self._pick_name("output", output_name, outputs, DEFAULT_OUTPUT_NAME)

        node = inputs[self.input_name]
        if len(node.shape) != 4:
            raise TeacherError(
                f"teacher model {self.path}: input {self.input_name!r} has rank {len(node.shape)} "
                f"(shape {node.shape}), expected 4: [B,3,H,W]"
            )
        if isinstance(node.shape[1], int) and node.shape[1] != 3:
            raise TeacherError(f"teacher model {self.path}: input {self.input_name!r} has {node.shape[1]} channels, expected 3")
        if node.type not in _ORT_FLOAT_TYPES:
            raise TeacherError(f"teacher model {self.path}: input {self.input_name!r} has type {node.type}, expected a float tensor")
        self.input_dtype = np.dtype(_ORT_FLOAT_TYPES[node.type])
        # A model exported with a fixed H x W is run at exactly that size (aspect is not preserved).
        fixed = node.shape[2:]
        self.fixed_size: tuple[int, int] | None = (
            (int(fixed[0]), int(fixed[1])) if all(isinstance(d, int) and d > 0 for d in fixed) else None
        )

        kind = output_kind or meta.get(META_OUTPUT_KIND) or "disparity"
        if kind not in OUTPUT_KINDS:
            raise TeacherError(f"teacher model {self.path}: output kind {kind!r} is not one of {OUTPUT_KINDS}")
        self.output_kind = kind
        side = short_side if short_side is not None else meta.get(META_SHORT_SIDE, DEFAULT_SHORT_SIDE)
        try:
            side = int(side)
        except (TypeError, ValueError) as exc:
            raise TeacherError(f"teacher model {self.path}: short side {side!r} is not an integer") from exc
        if side < PATCH:
            raise TeacherError(f"teacher model {self.path}: short side {side} is below the patch size {PATCH}")
        self.short_side = snap_to_patch(side)
        if probe:
            self._probe()

    # -- construction helpers ------------------------------------------------------------------
    def _pick_name(self, what: str, requested: str | None, nodes: dict, default: str) -> str:
        if requested is not None:
            if requested not in nodes:
                raise TeacherError(
                    f"teacher model {self.path}: no {what} named {requested!r} (has {sorted(nodes)})"
                )
            return requested
        if len(nodes) == 1:
            return next(iter(nodes))
        if default in nodes:
            return default
        raise TeacherError(
            f"teacher model {self.path}: {len(nodes)} {what}s {sorted(nodes)} and none named {default!r}; "
            f"pass {what}_name"
        )

    def _probe(self) -> None:
        """One deterministic small image through the graph: catches NaN/Inf weights and shape bugs early."""
        h, w = self.fixed_size or (_PROBE_SIZE, _PROBE_SIZE)
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, size=(1, h, w, 3), dtype=np.uint8)
        out = self._run(self._normalise(image))
        if not np.all(np.isfinite(out)):
            raise TeacherError(f"teacher model {self.path} produced non-finite output on a probe image")

    # -- identity ------------------------------------------------------------------------------
    def identity(self) -> dict:
        """What the teacher *is*, for cache keys and provenance (the providers do not change the maths)."""
        return {
            "sha256": self.sha256,
            "path": str(self.path),
            "output_kind": self.output_kind,
            "short_side": self.short_side,
            "input_name": self.input_name,
            "output_name": self.output_name,
        }

    def __repr__(self) -> str:
        return (f"Teacher({str(self.path)!r}, kind={self.output_kind}, short_side={self.short_side}, "
                f"providers={self.providers})")

    # Sessions do not pickle; rebuild from the constructor arguments (process / Dask runners).
    def __getstate__(self) -> dict:
        return {"init_args": {**self._init_args, "path": str(self.path), "probe": False}}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state["init_args"])

    # -- inference -----------------------------------------------------------------------------
    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input (h, w) for an image of height x width."""
        return self.fixed_size or network_size(height, width, self.short_side)

    def _normalise(self, images: np.ndarray) -> np.ndarray:
        x = imagenet_normalise_np(images.astype(np.float32) * np.float32(1.0 / 255.0))
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """(B,H,W,3) uint8 -> (B,3,h,w) float32: bicubic resize to the network size, ImageNet norm."""
        images = _as_batch(images)
        h, w = self.input_size(images.shape[1], images.shape[2])
        if (h, w) != images.shape[1:3]:
            images = np.stack([
                np.asarray(Image.fromarray(im).resize((w, h), Image.Resampling.BICUBIC)) for im in images
            ])
        return self._normalise(images)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        out = self._session.run([self.output_name], {self.input_name: batch.astype(self.input_dtype, copy=False)})[0]
        out = np.asarray(out)
        if out.ndim == 4 and out.shape[1] == 1:  # [B,1,H,W] models
            out = out[:, 0]
        if out.ndim != 3 or out.shape[0] != batch.shape[0]:
            raise TeacherError(
                f"teacher model {self.path}: output {self.output_name!r} has shape {out.shape}, expected [B,H,W]"
            )
        return out.astype(np.float32, copy=False)

    def predict(self, images: np.ndarray | list[np.ndarray], batch_size: int = 4) -> np.ndarray:
        """Raw teacher output at each image's full resolution: float32 (B,H,W). Deterministic."""
        images = _as_batch(images)
        n, height, width = images.shape[:3]
        result = np.empty((n, height, width), dtype=np.float32)
        step = max(1, int(batch_size))
        for start in range(0, n, step):
            raw = self._run(self.preprocess(images[start:start + step]))
            result[start:start + step] = resize_bilinear(raw, height, width)
        return result


def teacher_output_key(image_hash: str, teacher: dict) -> str:
    """Cache key (hex) of a teacher's raw output for one image at its own resolution: the image content
    hash + everything about the teacher that changes the numbers (``Teacher.identity()``'s sha256, output
    kind and short side). Used with ``storage.cache.ArrayCache(root)`` namespace "teacher"."""
    prep = stable_hash({k: teacher.get(k) for k in ("sha256", "output_kind", "short_side")}, n=64)
    return stable_hash(["teacher-output", image_hash, prep], n=64)
