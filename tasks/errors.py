"""Exception types shared by every area. Messages are one line and name the offending path."""
from __future__ import annotations


class MonolidarError(Exception):
    """Base class: the CLI prints ``str(exc)`` on one line and exits 2."""


class InputError(MonolidarError, ValueError):
    """Bad user input (image, directory, config). Message names the path and the reason."""


class StoreError(MonolidarError):
    """A dataset store is missing, not a store, or damaged."""


class TeacherError(MonolidarError):
    """A teacher model cannot be loaded or produced unusable output."""


class GeometryError(MonolidarError, ValueError):
    """Bad depth / intrinsics / mesh / sensor profile."""


class CheckpointError(MonolidarError):
    """A checkpoint is missing or belongs to another architecture."""
