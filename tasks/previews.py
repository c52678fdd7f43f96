"""Preview files for a dataset: RGB | teacher depth | sparse LiDAR overlay, one PNG per sample."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.visualize import preview_strip


def write_previews(store, outdir: str | Path, *, limit: int = 8, markdown: bool = False) -> str:
    """Write previews of the first ``limit`` ok samples of ``store`` (a storage.store.DatasetStore) as PNGs.

    Returns a markdown document (for a Prefect artifact) embedding small JPEG versions when ``markdown``,
    else the output folder as a string.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    table = store.manifest()
    rows = [r for r in table.to_pylist() if r["status"] == "ok"][: max(limit, 0)] if table.num_rows else []
    kind = store.attrs.get("teacher", {}).get("output_kind", "disparity")
    lines = [f"# Previews of `{store.path}`", "", "RGB | teacher depth | simulated LiDAR", ""]
    for r in rows:
        s = store.read_sample(int(r["index"]))
        strip = preview_strip(s["rgb"], np.asarray(s["teacher_output"], np.float32), s["sparse"], teacher_kind=kind)
        name = f"{int(r['index']):07d}_{r['sample_id']}.png"
        Image.fromarray(strip).save(outdir / name, optimize=False)
        if markdown:
            small = Image.fromarray(strip)
            small.thumbnail((608, 608))
            buf = io.BytesIO()
            small.save(buf, format="JPEG", quality=80)
            b64 = base64.b64encode(buf.getvalue()).decode()
            lines += [f"**{r['source_uri']}** (density {r.get('lidar_density') or 0:.3f})", "",
                      f"![{name}](data:image/jpeg;base64,{b64})", ""]
    return "\n".join(lines) if markdown else str(outdir)
