"""Photos for a stage-1 store this box can afford: every shared photo (minus the KITTI evaluation frames) as
several random crops, plus procedural street renders (``tasks/scenes.py``) written out as ordinary photos.

The folder this writes is the ``--images`` input of ``monolidar build``; the build's own per-sample
variants (``--samples-per-image``: depth-policy draw, sensor mount jitter, range noise and drops) then
multiply it. The KITTI frames in ``kitti_gt`` are left out on purpose: they are the evaluation set.

Usage: python bench/stage1_photos.py --out DIR [--crops N] [--renders N] [--seed S]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
PHOTO_GLOBS = ("natural/*.jpg", "nyu/rgb/*.jpg", "real_lidar/nuscenes/*.jpg", "real_lidar/ddad_like/*/rgb/*/*.jpg")


def shared_photos(root: Path = SHARED) -> list[Path]:
    """Every shared RGB photo except the KITTI evaluation frames, sorted."""
    return sorted(p for g in PHOTO_GLOBS for p in root.glob(g))


def random_crops(img: Image.Image, n: int, rng: np.random.Generator) -> list[Image.Image]:
    """The whole photo, then n-1 random windows covering 45-90 % of each side (the build resizes to cover)."""
    out = [img]
    w, h = img.size
    for _ in range(n - 1):
        cw, ch = int(w * rng.uniform(0.45, 0.9)), int(h * rng.uniform(0.45, 0.9))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        out.append(img.crop((x0, y0, x0 + cw, y0 + ch)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--crops", type=int, default=6, help="crops per shared photo (the first is the whole photo)")
    ap.add_argument("--renders", type=int, default=100, help="procedural street renders")
    ap.add_argument("--render-width", type=int, default=621, help="render width (KITTI camera aspect kept)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from tasks.scenes import generate_scene, render, resized

    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    photos = shared_photos()
    for p in photos:
        tag = "_".join(p.relative_to(SHARED).with_suffix("").parts)
        for i, c in enumerate(random_crops(Image.open(p).convert("RGB"), args.crops, rng)):
            if c.width > 1242:  # the canvas is far smaller; big PNGs only cost decode time in the build
                c = c.resize((1242, round(c.height * 1242 / c.width)), Image.BILINEAR)
            c.save(args.out / f"photo_{tag}_c{i}.png")
    for k in range(args.renders):
        path = args.out / f"render_street_{k:04d}.png"
        if path.exists():
            continue
        scene = generate_scene(10_000 + args.seed * 100_000 + k, "street", camera="kitti")
        scale = args.render_width / scene.width
        rgb, _ = render(resized(scene, round(scene.height * scale), args.render_width))
        Image.fromarray(rgb).save(path)
    print(f"{len(photos)} photos x {args.crops} crops + {args.renders} street renders -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
