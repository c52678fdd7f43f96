"""One headless OpenGL (EGL) renderer per thread, shared by every pyrender user in the process.

pyrender's ``OffscreenRenderer.delete()`` terminates the EGL display, which silently invalidates every other
live context in the process (the next render fails with EGL_BAD_DISPLAY). So renderers are made once per
thread (an EGL context belongs to the thread that created it), resized as needed, and never deleted.
"""
from __future__ import annotations

import os
import threading

_LOCAL = threading.local()


def offscreen_renderer(width: int, height: int):
    """This thread's pyrender.OffscreenRenderer, set to ``width`` x ``height``."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    import tasks.compat  # noqa: F401  (np.infty for pyrender under numpy 2)
    import pyrender

    renderer = getattr(_LOCAL, "renderer", None)
    if renderer is None:
        renderer = pyrender.OffscreenRenderer(width, height)
        _LOCAL.renderer = renderer
    renderer.viewport_width, renderer.viewport_height = int(width), int(height)
    return renderer
