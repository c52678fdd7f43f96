"""torch Dataset over a monolidar store, plus a shard-ordered sampler for fast sequential reads.

Process safety: the Dataset holds only plain data (path, sample indices, crop settings) until the first
``__getitem__`` in a process opens the Zarr store; it never pickles an open handle (``__getstate__`` drops it)
and reopens when it finds itself in a new process (pid check). So it works with DataLoader workers under both
the ``fork`` and ``spawn`` start methods (zarr resets its IO event loop in forked children itself).
Inside a process that has already run Prefect flows, prefer ``multiprocessing_context="spawn"``: Prefect's
at-fork handlers make forked children exit with status 1, which DataLoader reports as a crashed worker.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler

from storage.pngio import depth_metres, uint16_to_depth
from storage.store import DatasetStore
from tasks.errors import InputError
from tasks.provenance import derive_seed

_READ = ("rgb", "sparse", "depth", "teacher_output", "K")


class CompletionDataset(Dataset):
    """The ``ok`` samples of the complete shards of a store, as depth-completion training items.

    ``crop=(h, w)`` cuts every sample to h x w: the centre crop, or, with ``random_crop_seed``, a crop whose
    offset is drawn from ``derive_seed(random_crop_seed, epoch, index)`` (call ``set_epoch`` to vary it per
    epoch; the same seed, epoch and index always give the same crop).

    Item (dict of tensors), H x W = the crop size (or the store size without crop):
      - ``rgb``: float32 (3, H, W), RGB in [0, 1]
      - ``sparse``: float32 (1, H, W), simulated LiDAR depth in metres, 0 = no return
      - ``depth``: float32 (1, H, W), dense metric depth in metres (the stage-1 target)
      - ``teacher``: float32 (1, H, W), raw teacher output (unit depends on the teacher's output kind)
      - ``K``: float32 (3, 3), intrinsics in pixels, principal point shifted for the crop
      - ``index``: int, the sample's index in the store (shard * shard_size + row)
    """

    def __init__(self, path: str | os.PathLike, *, crop: tuple[int, int] | None = None,
                 random_crop_seed: int | None = None):
        self.path = Path(path)
        store = DatasetStore.open(self.path)
        table = store.manifest()
        status = np.asarray(table.column("status").to_pylist(), dtype=object)
        index = np.asarray(table.column("index").to_pylist(), dtype=np.int64)
        self.indices = index[status == "ok"]  # sorted: the manifest is sorted by index
        self.shards = self.indices // store.shard_size
        self.height, self.width = store.height, store.width
        if crop is not None:
            ch, cw = int(crop[0]), int(crop[1])
            if not (0 < ch <= self.height and 0 < cw <= self.width):
                raise InputError(f"{self.path}: crop {crop} does not fit the store's {self.height}x{self.width} images")
            crop = (ch, cw)
        self.crop = crop
        self.random_crop_seed = random_crop_seed
        self.epoch = 0
        self._store: DatasetStore | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.indices.size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_store"] = None  # open handles never cross process boundaries
        state["_pid"] = None
        return state

    def _open(self) -> DatasetStore:
        if self._store is None or self._pid != os.getpid():
            self._store = DatasetStore.open(self.path)
            self._pid = os.getpid()
        return self._store

    def _crop_origin(self, index: int) -> tuple[int, int]:
        ch, cw = self.crop
        dy, dx = self.height - ch, self.width - cw
        if self.random_crop_seed is None:
            return dy // 2, dx // 2
        rng = np.random.default_rng(derive_seed(self.random_crop_seed, self.epoch, index))
        return int(rng.integers(0, dy + 1)), int(rng.integers(0, dx + 1))

    def __getitem__(self, i: int) -> dict:
        index = int(self.indices[i])
        a = self._open().read_arrays(index, _READ)
        rgb, sparse, depth, teacher = a["rgb"], a["sparse"], a["depth"], a["teacher_output"]
        K = a["K"].astype(np.float32).copy()
        if self.crop is not None:
            y0, x0 = self._crop_origin(index)
            ys, xs = slice(y0, y0 + self.crop[0]), slice(x0, x0 + self.crop[1])
            rgb, sparse, depth, teacher = rgb[ys, xs], sparse[ys, xs], depth[ys, xs], teacher[ys, xs]
            K[0, 2] -= x0
            K[1, 2] -= y0
        return {
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) / 255.0),
            "sparse": torch.from_numpy(uint16_to_depth(sparse)[None]),
            "depth": torch.from_numpy(np.ascontiguousarray(depth_metres(depth))[None]),
            "teacher": torch.from_numpy(np.ascontiguousarray(teacher, dtype=np.float32)[None]),
            "K": torch.from_numpy(K),
            "index": index,
        }


class ShardOrderedSampler(Sampler[int]):
    """Yields dataset positions shard by shard: shard order and order within each shard are shuffled with
    ``derive_seed(seed, epoch)``, so reads stay inside one shard file at a time (sequential, cache friendly)
    while epochs still differ. ``shuffle=False`` gives storage order."""

    def __init__(self, dataset: CompletionDataset, *, seed: int = 0, shuffle: bool = True):
        self.shards = np.asarray(dataset.shards, dtype=np.int64)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.shards.size)

    def __iter__(self) -> Iterator[int]:
        unique = np.unique(self.shards)
        positions = {int(s): np.flatnonzero(self.shards == s) for s in unique}
        if not self.shuffle:
            order = [positions[int(s)] for s in unique]
        else:
            rng = np.random.default_rng(derive_seed(self.seed, self.epoch))
            order = [rng.permutation(positions[int(s)]) for s in rng.permutation(unique)]
        for block in order:
            yield from (int(p) for p in block)


def open_stores(stores: "str | os.PathLike | list[str | os.PathLike]") -> Dataset:
    """One store as a CompletionDataset, several as their concatenation (trained on as one)."""
    paths = [stores] if isinstance(stores, (str, os.PathLike)) else list(stores)
    parts = [CompletionDataset(s) for s in paths]
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)
