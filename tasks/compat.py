"""numpy-2 compatibility shim for pyrender 0.1.45, which still references ``np.infty``.

Import this module before importing pyrender. It only restores the removed alias.
"""
from __future__ import annotations

import numpy as np

if not hasattr(np, "infty"):
    np.infty = np.inf
