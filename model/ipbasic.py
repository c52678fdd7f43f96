"""IP-Basic: classical depth completion by image processing (Ku et al., CRV 2018), in numpy/scipy.

No learning; the reference baseline ("--baseline ipbasic"). Steps of the "fast" variant:

1. invert valid depths (``max_depth - d``) so that morphological *dilation* favours *near* points
   (near objects occlude far ones, so a near return should win a neighbourhood);
2. dilate with a 5x5 diamond, then close with a full 5x5 kernel (joins nearby scan lines);
3. fill remaining small holes from a 7x7 dilation;
4. extend the top-most value of each column upward (LiDAR sees nothing above its top beam);
5. fill remaining large holes from a 31x31 dilation;
6. median blur (5x5) then Gaussian blur (5x5, sigma 1.1 like OpenCV's sigma=0 rule) on valid pixels;
7. invert back.

Input/output: HxW float32 depth in metres, 0 = no data. Pixels that still have no value stay 0.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

_DIAMOND_5 = np.array(
    [[0, 0, 1, 0, 0],
     [0, 1, 1, 1, 0],
     [1, 1, 1, 1, 1],
     [0, 1, 1, 1, 0],
     [0, 0, 1, 0, 0]], dtype=bool)
_VALID = 0.1  # metres (in inverted space too): anything below counts as empty
# OpenCV's GaussianBlur with ksize 5 and sigma 0 uses sigma = 0.3 * ((5 - 1) * 0.5 - 1) + 0.8 = 1.1
_GAUSS_SIGMA = 1.1
_GAUSS_TRUNCATE = 2.0 / _GAUSS_SIGMA  # radius 2 -> a 5x5 kernel


def _fill_from_dilation(depth: np.ndarray, size: int) -> np.ndarray:
    empty = depth < _VALID
    dilated = ndimage.maximum_filter(depth, size=size, mode="nearest")
    return np.where(empty, dilated, depth)


def ipbasic_complete(
    sparse_m: np.ndarray,
    *,
    max_depth: float = 100.0,
    extrapolate: bool = True,
    blur: bool = True,
) -> np.ndarray:
    """Dense depth (HxW float32 metres) from sparse LiDAR depth (HxW metres, 0 = none)."""
    sparse = np.asarray(sparse_m, dtype=np.float32)
    if sparse.ndim != 2:
        raise ValueError(f"ipbasic_complete expects an HxW depth map, got shape {sparse.shape}")
    d = sparse.copy()
    valid = d > _VALID
    d[valid] = max_depth - d[valid]
    d[~valid] = 0.0

    d = ndimage.grey_dilation(d, footprint=_DIAMOND_5, mode="nearest")
    d = ndimage.grey_closing(d, size=(5, 5), mode="nearest")
    d = _fill_from_dilation(d, 7)

    if extrapolate:
        has = d > _VALID
        any_col = has.any(axis=0)
        top = np.argmax(has, axis=0)  # first valid row per column
        top_val = d[top, np.arange(d.shape[1])]
        rows = np.arange(d.shape[0])[:, None]
        above = (rows < top[None, :]) & any_col[None, :]
        d = np.where(above, top_val[None, :], d)

    d = _fill_from_dilation(d, 31)

    if blur:
        d = ndimage.median_filter(d, size=5, mode="nearest")
        valid = d > _VALID
        blurred = ndimage.gaussian_filter(d, sigma=_GAUSS_SIGMA, truncate=_GAUSS_TRUNCATE, mode="nearest")
        d = np.where(valid, blurred, d)

    valid = d > _VALID
    out = np.zeros_like(d, dtype=np.float32)
    out[valid] = max_depth - d[valid]
    return out
