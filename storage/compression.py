"""The store's compression profiles: which standard codecs each array is written with (one place; the store,
the build flow and the CLI read them from here, and this module imports nothing heavy so ``monolidar --help``
stays fast)."""
from __future__ import annotations

from typing import Literal

# Standard Blosc (zstd or lz4 inside) + crc32c per chunk, chosen by measurement on the bench_loader
# samples (KITTI-like 352x1216; figures in README "Dataset format") and on simulated build shards
# (bench/bench_build.py --stages). Three profiles:
# * "balanced" (default, what a build writes): blosc lz4 with bit shuffle for the uint8 RGB; blosc zstd level 1
#   for the maps, with bit shuffle for the float16 teacher output and the uint16 depth and no shuffle for sparse
#   (mostly zeros: zstd's own matches beat a shuffle there, 48 vs 57 KiB and 1.2 vs 1.8 ms per sample,
#   decoding 0.6 vs 0.8 ms). All in 256 KiB blocks. Zstd 2 with byte shuffle for the teacher output saved
#   2.5 % of its bytes for 2.3x its time; level 5 with blosc's automatic block size took ~70-90 ms per sample
#   for 1-6 % fewer bytes. Depth in the KITTI uint16 form (format 3) takes 434 KiB against 1061 KiB as float32
#   (the float32 mantissa below the teacher's float16 precision was noise to the compressor).
#   Why lz4 for RGB: photos compress little without a predictor (no standard Zarr codec has one), so RGB is
#   where zstd buys the fewest bytes per CPU millisecond. On 21 real photos fitted to 352x1216 (shared
#   natural, KITTI, NYU and the demo photos; one core): lz4 1.40 ms for 972 KiB against zstd 3.73 ms for
#   820 KiB, decoding 0.92 against 1.68 ms; zstd saves ~48 KiB per extra ms there, ~85-110 KiB on the teacher
#   output and depth. Per simulated sample the four arrays now encode in ~5.6 ms (RGB zstd: ~8.5 ms) for
#   ~1.08x the bytes (1826 vs 1684 KiB, bench/bench_build.py --stages); the build's budget is 30 ms of CPU
#   per sample in all. Stores created with zstd RGB are read and extended with their own codecs, which the
#   array metadata records (tests/test_storage.py).
# * "fast": blosc lz4 (level 1, 256 KiB blocks) for every array, byte shuffle for the teacher output and the
#   depth: ~3.2 ms to encode a simulated 352x1216 sample on one core, ~2x less than "balanced" to decode the
#   maps (the store's tensorstore reader read 1.3x the samples/s of the zstd-RGB "balanced" in bench_loader),
#   for ~1.11x "balanced"'s bytes (2031 vs 1826 KiB per simulated HDL-64E sample). For builds whose CPU, not
#   storage, is the limit (a fast GPU teacher with few cores beside it) and for training readers that decode
#   every sample every epoch.
# * "small": blosc level 9 (= zstd 22) and RGB planar (a standard transpose codec first, then no shuffle):
#   ~6-10 % smaller overall, but 0.5-1.7 s of CPU per array and sample on writes, far over the build's
#   ~30 ms per-sample budget; meant for archiving or publishing a finished dataset.
# "balanced" and "small" decode at about the same cost. name -> (transpose order or None, cname, clevel, shuffle,
# blocksize; 0 = blosc chooses)
COMPRESSION = {
    "balanced": {
        "rgb": (None, "lz4", 1, "bitshuffle", 256 << 10),
        "teacher_output": (None, "zstd", 1, "bitshuffle", 256 << 10),
        "depth": (None, "zstd", 1, "bitshuffle", 256 << 10),
        "sparse": (None, "zstd", 1, "noshuffle", 256 << 10),
        "K": (None, "zstd", 1, "shuffle", 0),
        "lidar_pose": (None, "zstd", 1, "shuffle", 0),
    },
    "fast": {
        "rgb": (None, "lz4", 1, "bitshuffle", 256 << 10),
        "teacher_output": (None, "lz4", 1, "shuffle", 256 << 10),
        "depth": (None, "lz4", 1, "shuffle", 256 << 10),
        "sparse": (None, "lz4", 1, "noshuffle", 256 << 10),
        "K": (None, "lz4", 1, "shuffle", 0),
        "lidar_pose": (None, "lz4", 1, "shuffle", 0),
    },
    "small": {
        "rgb": ((0, 3, 1, 2), "zstd", 9, "noshuffle", 0),
        "teacher_output": (None, "zstd", 9, "shuffle", 0),
        "depth": (None, "zstd", 9, "bitshuffle", 0),
        "sparse": (None, "zstd", 9, "shuffle", 0),
        "K": (None, "zstd", 5, "shuffle", 0),
        "lidar_pose": (None, "zstd", 5, "shuffle", 0),
    },
}
DEFAULT_COMPRESSION = "balanced"
# The profile names as a type, so the Prefect UI shows a dropdown (kept equal to COMPRESSION's keys; tested).
Compression = Literal["balanced", "fast", "small"]
