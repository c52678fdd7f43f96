"""Distinct benchmark photos: seeded crops, flips and colour jitter of the shared and demo photos.

Every output has different bytes (so a different content hash, so its own teacher inference and cache
entry), a photo-like size (long side 1024-1600 px) and JPEG quality 90. Written into a folder the caller
owns (a temporary one): nothing here is committed.

    python bench/synth_images.py OUT_DIR --n 5000 [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SOURCES = [REPO.parent / "shared" / "data" / "natural", REPO / "flows" / "demo_images"]


def source_photos() -> list[Image.Image]:
    # Sources in SOURCES order, names sorted within each: the same photos in the same order wherever the checkout
    # lives (sorting absolute paths put the demo photos first or last depending on the folder's name).
    paths = [p for d in SOURCES if d.is_dir() for p in sorted(d.glob("*.jpg"), key=lambda q: q.name)]
    if not paths:
        raise SystemExit(f"no source photos found in {', '.join(map(str, SOURCES))}")
    return [Image.open(p).convert("RGB") for p in paths]


def make_variant(src: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = src.size
    frac = rng.uniform(0.6, 1.0)  # crop 60-100 % of each side, anywhere in the photo
    cw, ch = max(64, int(w * frac)), max(64, int(h * rng.uniform(max(0.6, frac - 0.15), min(1.0, frac + 0.15))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = src.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    long_side = int(rng.integers(1024, 1601))
    scale = long_side / max(im.size)
    im = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.Resampling.BILINEAR)
    a = np.asarray(im, dtype=np.float32)
    gain = rng.uniform(0.8, 1.2, 3)  # per-channel colour jitter + brightness/contrast
    a = (a - 128.0) * rng.uniform(0.85, 1.15) + 128.0 + rng.uniform(-15, 15)
    return Image.fromarray(np.clip(a * gain, 0, 255).astype(np.uint8))


def write_images(out: Path, n: int, seed: int = 0) -> list[Path]:
    """Write n distinct JPEGs into out (reusing ones already there from the same seed)."""
    out.mkdir(parents=True, exist_ok=True)
    photos = source_photos()
    paths = []
    for i in range(n):
        p = out / f"synth_{seed}_{i:07d}.jpg"
        if not p.exists():
            rng = np.random.default_rng([seed, i])
            make_variant(photos[i % len(photos)], rng).save(p, quality=90)
        paths.append(p)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paths = write_images(args.out, args.n, args.seed)
    print(f"{len(paths)} images in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
