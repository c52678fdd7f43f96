"""Seeded procedural 3-D scenes (street and indoor) with exact depth: training data for the embedded teacher
and ground truth for checking the mesh / LiDAR pipeline.

A scene is a list of textured parts built directly in the camera frame (OpenCV: x right, y down, z forward,
metres), plus pinhole intrinsics. ``render`` rasterises it headless with pyrender (EGL); ``raycast_depth``
intersects a ray through every pixel centre with the same triangles via Embree, so the two can be compared.
Everything random goes through one ``np.random.default_rng(seed)``: the same seed gives identical bytes.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import trimesh

from tasks.errors import GeometryError, InputError

SCENE_KINDS = ("street", "indoor")
CAMERA_KINDS = ("kitti", "phone")
TEXTURE_KINDS = ("noise", "stripes", "checker", "bricks", "windows", "plain", "gravel", "foliage", "grass")
_TEX_SIZE = 64
_ZNEAR, _ZFAR = 0.05, 400.0


@dataclass
class Part:
    """One textured object: geometry in the camera frame, an RGB texture tiled every ``tile_m`` metres."""

    mesh: trimesh.Trimesh
    texture: np.ndarray  # (T, T, 3) uint8
    tile_m: float


@dataclass
class Scene:
    parts: list[Part]
    K: np.ndarray  # (3, 3) float64, OpenCV pixel convention (pixel centres at integer coordinates)
    height: int
    width: int
    kind: str
    seed: int
    sun_direction: np.ndarray  # unit vector in the camera frame, pointing from the sun into the scene
    sun_intensity: float
    ambient: float
    sky_top: np.ndarray = field(default_factory=lambda: np.array([90, 140, 210], np.uint8))
    sky_horizon: np.ndarray = field(default_factory=lambda: np.array([200, 215, 230], np.uint8))

    @cached_property
    def mesh(self) -> trimesh.Trimesh:
        """All parts as one untextured triangle mesh (camera frame, metres): the true geometry."""
        return trimesh.util.concatenate([p.mesh for p in self.parts])


# ----------------------------------------------------------------------------------------------- textures
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Tileable value noise in [0, 1]: a coarse random grid upsampled bilinearly with wrap-around."""
    grid = rng.random((cells, cells))
    coords = np.arange(size) * cells / size
    i0 = np.floor(coords).astype(int)
    f = coords - i0
    i1 = (i0 + 1) % cells
    rows = grid[i0][:, i0] * (1 - f)[None, :] + grid[i0][:, i1] * f[None, :]
    rows1 = grid[i1][:, i0] * (1 - f)[None, :] + grid[i1][:, i1] * f[None, :]
    return rows * (1 - f)[:, None] + rows1 * f[:, None]


def make_texture(rng: np.random.Generator, kind: str, base: np.ndarray, size: int = _TEX_SIZE) -> np.ndarray:
    """A tileable procedural texture (size x size x 3 uint8) of one of TEXTURE_KINDS around colour ``base``."""
    base = np.asarray(base, np.float64)
    y, x = np.mgrid[0:size, 0:size] / size
    if kind == "noise":
        pattern = 0.6 * _smooth_noise(rng, size, 4) + 0.4 * _smooth_noise(rng, size, 16)
        shade = 0.7 + 0.6 * (pattern - 0.5)
    elif kind == "stripes":
        n = int(rng.integers(2, 8))
        shade = 0.8 + 0.25 * np.sign(np.sin(2 * np.pi * n * (x if rng.random() < 0.5 else y)))
    elif kind == "checker":
        n = int(rng.integers(2, 6))
        shade = 0.75 + 0.35 * ((np.floor(x * n) + np.floor(y * n)) % 2)
    elif kind == "bricks":
        rows = int(rng.integers(4, 9))
        row = np.floor(y * rows)
        xs = (x * rows / 2 + 0.5 * (row % 2)) % 1.0
        mortar = (((y * rows) % 1.0) < 0.12) | (xs < 0.06)
        shade = np.where(mortar, 1.35, 0.85 + 0.2 * _smooth_noise(rng, size, 8))
    elif kind == "windows":
        cols = int(rng.integers(1, 4))
        wall = 0.9 + 0.15 * _smooth_noise(rng, size, 8)
        in_x = ((x * cols) % 1.0 > 0.2) & ((x * cols) % 1.0 < 0.8)
        in_y = (y > 0.25) & (y < 0.75)
        glass = np.array([40, 55, 70], np.float64) * (0.7 + 0.6 * rng.random())
        img = np.where((in_x & in_y)[..., None], glass, base * wall[..., None])
        return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    elif kind == "plain":
        shade = 0.95 + 0.1 * _smooth_noise(rng, size, 4)
    elif kind == "gravel":  # ballast, chippings, rough asphalt: strong texture on flat ground
        pebbles = np.kron(rng.random((size // 2, size // 2)), np.ones((2, 2)))
        shade = 0.45 + 0.9 * (0.6 * pebbles + 0.4 * _smooth_noise(rng, size, 8))
    elif kind == "foliage":  # lit leaf clumps with dark gaps between them
        clumps = 0.5 * _smooth_noise(rng, size, 8) + 0.5 * _smooth_noise(rng, size, 16)
        cut = rng.uniform(0.4, 0.55)
        shade = np.where(clumps > cut, 0.9 + 1.2 * (clumps - cut), 0.3 + 0.3 * clumps)
        shade = shade * (0.85 + 0.3 * rng.random((size, size)))
    elif kind == "grass":
        blades = np.kron(rng.random((size, size // 4)), np.ones((1, 4)))
        shade = 0.7 + 0.35 * blades + 0.3 * (_smooth_noise(rng, size, 4) - 0.5)
    else:
        raise InputError(f"texture kind {kind!r}: unknown (choose from {', '.join(TEXTURE_KINDS)})")
    img = base[None, None, :] * shade[..., None]
    return np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)


def _random_colour(rng: np.random.Generator, palette: str) -> np.ndarray:
    palettes = {
        "asphalt": ([60, 60, 62], 25), "concrete": ([150, 148, 140], 40), "grass": ([70, 110, 50], 30),
        "facade": ([170, 150, 130], 70), "car": ([128, 128, 128], 120), "wood": ([120, 85, 55], 35),
        "bark": ([80, 60, 40], 20), "leaves": ([55, 100, 45], 30), "wall": ([200, 195, 185], 45),
        "metal": ([110, 110, 115], 30), "any": ([128, 128, 128], 110),
    }
    centre, spread = palettes[palette]
    return np.clip(np.asarray(centre) + rng.uniform(-spread, spread, 3), 10, 245)


def _part(rng: np.random.Generator, mesh: trimesh.Trimesh, palette: str, kinds: tuple[str, ...],
          tile_m: tuple[float, float]) -> Part:
    tex = make_texture(rng, str(rng.choice(kinds)), _random_colour(rng, palette))
    return Part(mesh=mesh, texture=tex, tile_m=float(rng.uniform(*tile_m)))


def _box(extents, centre) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(centre))


def _cylinder_y(radius: float, length: float, centre, sections: int = 10) -> trimesh.Trimesh:
    """Vertical (along y) cylinder: poles and trunks."""
    m = trimesh.creation.cylinder(radius=radius, height=length, sections=sections)
    m.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    m.apply_translation(centre)
    return m


# ----------------------------------------------------------------------------------------------- cameras
def _camera(rng: np.random.Generator, camera: str) -> tuple[np.ndarray, int, int]:
    if camera == "kitti":
        width, height = 1242, 375
        f = rng.uniform(700.0, 730.0)
        cx = width / 2 + rng.uniform(-15, 15)
        cy = height * rng.uniform(0.44, 0.50)
    elif camera == "phone":
        width, height = (640, 480) if rng.random() < 0.8 else (480, 640)
        hfov = np.deg2rad(rng.uniform(65.0, 75.0))
        f = (max(width, height) / 2) / np.tan(hfov / 2)
        cx = width / 2 + rng.uniform(-5, 5)
        cy = height / 2 + rng.uniform(-5, 5)
    else:
        raise InputError(f"camera kind {camera!r}: unknown (choose from {', '.join(CAMERA_KINDS)})")
    K = np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    return K, height, width


def _view_rotation(rng: np.random.Generator, pitch_deg: float, roll_deg: float, yaw_deg: float) -> np.ndarray:
    """Camera-from-level-world rotation for a small random pitch (looking down = positive), roll and yaw."""
    p, r, y = np.deg2rad(rng.uniform(-1, 1, 3) * [pitch_deg, roll_deg, yaw_deg])
    rx = trimesh.transformations.rotation_matrix(-p, [1, 0, 0])
    rz = trimesh.transformations.rotation_matrix(r, [0, 0, 1])
    ry = trimesh.transformations.rotation_matrix(y, [0, 1, 0])
    return rz @ rx @ ry


# ----------------------------------------------------------------------------------------------- builders
def _tree(rng: np.random.Generator, x: float, z: float, g: float, scale: float = 1.0) -> list[Part]:
    """Trunk plus a crown: a round clump of overlapping spheres, or a cone (conifer)."""
    th, cr = rng.uniform(1.5, 4.5) * scale, rng.uniform(1.0, 3.5) * scale
    parts = [_part(rng, _cylinder_y(rng.uniform(0.1, 0.35) * scale, th, [x, g - th / 2, z]),
                   "bark", ("noise", "stripes"), (0.5, 1.5))]
    if rng.random() < 0.8:
        blobs = []
        for _ in range(int(rng.integers(1, 6))):
            r = cr * rng.uniform(0.5, 0.9)
            blob = trimesh.creation.icosphere(subdivisions=2, radius=r)
            blob.apply_translation([x + rng.uniform(-0.6, 0.6) * cr, g - th - cr * rng.uniform(0.4, 1.2),
                                    z + rng.uniform(-0.6, 0.6) * cr])
            blobs.append(blob)
        crown = trimesh.util.concatenate(blobs)
    else:
        crown = trimesh.creation.cone(radius=cr, height=cr * 2.5, sections=12)
        crown.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
        crown.apply_translation([x, g - th + 0.2, z])
    parts.append(_part(rng, crown, "leaves", ("foliage", "foliage", "noise"), (0.5, 2.5)))
    return parts


def _car(rng: np.random.Generator, x: float, z: float, g: float) -> list[Part]:
    """Body, cabin and a dark wheel band: three boxes, driving direction along z."""
    length, width, hb = rng.uniform(3.8, 5.0), rng.uniform(1.6, 1.9), rng.uniform(0.7, 1.0)
    car_rng = np.random.default_rng(rng.integers(1 << 62))
    colour_tex = make_texture(car_rng, "plain", _random_colour(car_rng, "car"))
    body = _box([width, hb, length], [x, g - 0.3 - hb / 2, z])
    cabin_h = rng.uniform(0.5, 0.8)
    cabin = _box([width * 0.9, cabin_h, length * 0.55], [x, g - 0.3 - hb - cabin_h / 2, z - 0.2])
    wheels = _box([width * 0.95, 0.32, length * 0.8], [x, g - 0.16, z])
    return [Part(body, colour_tex, 1.0), Part(cabin, make_texture(car_rng, "plain", [45, 55, 65]), 1.0),
            Part(wheels, np.full((4, 4, 3), 25, np.uint8), 1.0)]


def _facades(rng: np.random.Generator, side: int, base_x: float, g: float) -> list[Part]:
    """A row of building blocks with random widths, heights, setbacks and occasional gaps."""
    parts, z = [], rng.uniform(-10, 5)
    while z < 140:
        w = rng.uniform(5, 25)
        if rng.random() < 0.85:
            h, d = rng.uniform(4, 25), rng.uniform(6, 15)
            x = base_x + side * (d / 2 + rng.uniform(0, 2.0))
            parts.append(_part(rng, _box([d, h, w], [x, g - h / 2, z + w / 2]), "facade",
                               ("windows", "bricks", "noise", "stripes", "plain"), (2.0, 5.0)))
        z += w + (rng.uniform(0, 6) if rng.random() < 0.3 else 0.0)
    return parts


def _roadside(rng: np.random.Generator, side: int, edge: float, g: float, far: float) -> list[Part]:
    """One side of the road, outward from its edge: urban pavement with facades, a green verge with a tree
    row, or a gravel track bed with rails; then optionally a wall or hedge and trees or buildings behind."""
    parts: list[Part] = []
    style = str(rng.choice(["urban", "green", "rail"], p=[0.5, 0.3, 0.2]))
    side_w = rng.uniform(1.5, 4.0) if style == "urban" else rng.uniform(2.0, 9.0)
    centre = edge + side * side_w / 2
    if style == "urban":
        kerb = rng.uniform(0.08, 0.18)
        parts.append(_part(rng, _box([side_w, kerb + 0.2, far + 20], [centre, g - kerb / 2 + 0.1, far / 2]),
                           "concrete", ("checker", "noise", "plain", "gravel"), (0.5, 2.0)))
    else:
        top = rng.uniform(-0.05, 0.12)  # verge or ballast slightly below or above the road
        palette, kinds = (("grass", ("grass", "noise")) if style == "green"
                          else ("concrete", ("gravel",)))
        parts.append(_part(rng, _box([side_w, 0.4, far + 20], [centre, g - top + 0.2, far / 2]), palette, kinds,
                           (0.3, 2.0)))
        if style == "rail":
            for k in range(int(rng.integers(1, 3))):
                mid = edge + side * rng.uniform(1.2, max(1.3, side_w - 1.2))
                for off in (-0.7175, 0.7175):  # standard gauge
                    parts.append(_part(rng, _box([0.07, 0.15, far + 20], [mid + off, g - top - 0.075, far / 2]),
                                       "metal", ("plain",), (1.0, 2.0)))
    outer = edge + side * side_w
    # Things standing along the strip: poles and trees (a dense row on green verges).
    spacing = rng.uniform(4, 12) if style == "green" else rng.uniform(8, 25)
    for zz in np.arange(rng.uniform(2, 12), 100, spacing):
        x = edge + side * rng.uniform(0.4, max(0.5, side_w - 0.3))
        if style == "urban" and rng.random() < 0.5:
            ph = rng.uniform(3, 8)
            parts.append(_part(rng, _cylinder_y(rng.uniform(0.05, 0.15), ph, [x, g - ph / 2, zz]),
                               "metal", ("plain", "noise"), (1.0, 2.0)))
        elif style != "rail" or rng.random() < 0.3:
            parts += _tree(rng, x, zz + rng.uniform(-1, 1), g)
    # Behind the strip: a wall or hedge, then buildings or a band of trees.
    if rng.random() < 0.45:
        h = rng.uniform(0.6, 3.0)
        hedge = rng.random() < 0.5
        thick = rng.uniform(0.3, 1.5) if hedge else rng.uniform(0.2, 0.4)
        z0, z1 = rng.uniform(-5, 10), rng.uniform(40, 150)
        wall = _box([thick, h, z1 - z0], [outer + side * thick / 2, g - h / 2, (z0 + z1) / 2])
        parts.append(_part(rng, wall, "leaves", ("foliage",), (0.5, 2.0)) if hedge else
                     _part(rng, wall, "facade", ("bricks", "noise", "plain"), (0.5, 3.0)))
    base_x = outer + side * rng.uniform(0.0, 4.0)
    if rng.random() < (0.85 if style == "urban" else 0.35):
        parts += _facades(rng, side, base_x, g)
    elif rng.random() < 0.7:
        for zz in np.arange(rng.uniform(0, 8), 120, rng.uniform(3, 9)):
            parts += _tree(rng, base_x + side * rng.uniform(1, 10), zz, g, scale=rng.uniform(1.0, 1.8))
    return parts


def _street_parts(rng: np.random.Generator, cam_h: float) -> list[Part]:
    """Level world frame with the camera at the origin, ground at y = +cam_h (y points down)."""
    parts: list[Part] = []
    g = cam_h
    lanes = int(rng.integers(1, 4))
    road_w = lanes * rng.uniform(3.0, 3.8) * 2 if rng.random() < 0.6 else lanes * rng.uniform(3.0, 3.8)
    road_x0 = -rng.uniform(0.3, 0.7) * road_w  # camera somewhere across the road
    road_x1 = road_x0 + road_w
    far = 160.0
    ground = _box([400.0, 0.2, 400.0], [0.0, g + 0.1 + 0.15, 150.0])  # terrain slightly below the road
    parts.append(_part(rng, ground, str(rng.choice(["grass", "concrete"])), ("noise", "plain", "grass"), (1.0, 6.0)))
    road = _box([road_w, 0.2, far + 20], [(road_x0 + road_x1) / 2, g + 0.1, far / 2])
    parts.append(_part(rng, road, "asphalt", ("noise", "plain", "gravel"), (0.5, 3.0)))
    # Dashed lane marks 1 cm proud of the road, so render and ray cast agree on what is visible.
    dash, gap = rng.uniform(2.0, 4.0), rng.uniform(4.0, 8.0)
    for k in range(1, lanes * 2 if road_w > 5 else 1):
        xm = road_x0 + road_w * k / (lanes * 2)
        z = rng.uniform(0, gap)
        while z < 90:
            parts.append(Part(_box([0.15, 0.02, dash], [xm, g - 0.01, z + dash / 2]),
                              np.full((4, 4, 3), 230, np.uint8), 1.0))
            z += dash + gap
    if rng.random() < 0.5:  # solid edge lines
        for xm in (road_x0 + 0.3, road_x1 - 0.3):
            parts.append(Part(_box([0.12, 0.02, 90.0], [xm, g - 0.01, 45.0]), np.full((4, 4, 3), 225, np.uint8), 1.0))
    for side, edge in ((-1, road_x0), (1, road_x1)):
        parts += _roadside(rng, side, edge, g, far)
        if rng.random() < 0.35:  # a row of cars parked along this kerb
            z = rng.uniform(2, 10)
            x = edge - side * 1.1
            while z < rng.uniform(30, 70):
                if abs(x) > 1.6 or z > 8:  # never a car on top of (or just in front of) the camera
                    parts += _car(rng, x, z, g)
                z += rng.uniform(5.0, 9.0)
    # Cars: driving in lanes ahead and parked along the kerbs.
    for _ in range(int(rng.integers(0, 10))):
        if rng.random() < 0.5:
            x = (road_x0 + 1.1) if rng.random() < 0.5 else (road_x1 - 1.1)
        else:
            x = rng.uniform(road_x0 + 1.2, road_x1 - 1.2)
        z = rng.uniform(4, 70)
        if abs(x) > 1.6 or z > 8:
            parts += _car(rng, x, z, g)
    return parts


def _between(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Uniform in [lo, hi], or lo when the interval is empty (furniture wider than the space left)."""
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def _indoor_parts(rng: np.random.Generator, cam_h: float) -> list[Part]:
    parts: list[Part] = []
    g = cam_h
    room_w, room_d, room_h = rng.uniform(3, 9), rng.uniform(4, 12), rng.uniform(2.4, 3.3)
    x0 = -rng.uniform(0.25, 0.75) * room_w
    x1 = x0 + room_w
    z0, z1 = -rng.uniform(0.3, 1.5), None
    z1 = z0 + room_d
    t = 0.1
    ceiling_y = g - room_h
    cx, cz = (x0 + x1) / 2, (z0 + z1) / 2
    parts.append(_part(rng, _box([room_w + 2 * t, t, room_d + 2 * t], [cx, g + t / 2, cz]), "wood",
                       ("stripes", "checker", "noise"), (0.5, 2.0)))
    parts.append(_part(rng, _box([room_w + 2 * t, t, room_d + 2 * t], [cx, ceiling_y - t / 2, cz]), "wall",
                       ("plain", "noise"), (1.0, 3.0)))
    wall_kinds = ("plain", "noise", "stripes", "bricks")
    for centre, ext in (([x0 - t / 2, g - room_h / 2, cz], [t, room_h, room_d]),
                        ([x1 + t / 2, g - room_h / 2, cz], [t, room_h, room_d]),
                        ([cx, g - room_h / 2, z1 + t / 2], [room_w, room_h, t]),
                        ([cx, g - room_h / 2, z0 - t / 2], [room_w, room_h, t])):
        parts.append(_part(rng, _box(ext, centre), "wall", wall_kinds, (0.5, 3.0)))
    for _ in range(int(rng.integers(2, 10))):
        kind = rng.choice(["cabinet", "table", "sofa", "box"])
        if kind == "cabinet":  # against a side or the back wall
            w, d, h = rng.uniform(0.5, 2.0), rng.uniform(0.35, 0.7), rng.uniform(0.8, 2.2)
            if rng.random() < 0.5:
                x = x0 + d / 2 if rng.random() < 0.5 else x1 - d / 2
                z = _between(rng, z0 + w, z1 - w)
                ext = [d, h, w]
            else:
                x, z = _between(rng, x0 + w, x1 - w), z1 - d / 2
                ext = [w, h, d]
            parts.append(_part(rng, _box(ext, [x, g - h / 2, z]), "wood", ("plain", "stripes", "noise"),
                               (0.5, 2.0)))
        elif kind == "table":
            w, d, h = rng.uniform(0.8, 2.0), rng.uniform(0.6, 1.2), rng.uniform(0.65, 0.8)
            x, z = _between(rng, x0 + w / 2, x1 - w / 2), _between(rng, max(z0, 1.0) + d, z1 - d)
            tex_rng = np.random.default_rng(rng.integers(1 << 62))
            tex = make_texture(tex_rng, "noise", _random_colour(tex_rng, "wood"))
            parts.append(Part(_box([w, 0.05, d], [x, g - h, z]), tex, 1.0))
            for sx in (-1, 1):
                for sz in (-1, 1):
                    leg = _box([0.05, h - 0.05, 0.05], [x + sx * (w / 2 - 0.05), g - (h - 0.05) / 2,
                                                         z + sz * (d / 2 - 0.05)])
                    parts.append(Part(leg, tex, 1.0))
        else:
            w, d, h = ((rng.uniform(1.5, 2.4), rng.uniform(0.8, 1.0), rng.uniform(0.6, 0.9)) if kind == "sofa"
                       else rng.uniform(0.3, 1.2, 3))
            x, z = _between(rng, x0 + w / 2, x1 - w / 2), _between(rng, max(z0, 1.0) + d / 2, z1 - d / 2)
            parts.append(_part(rng, _box([w, h, d], [x, g - h / 2, z]), "any", TEXTURE_KINDS[:4], (0.3, 1.5)))
    return parts


def generate_scene(seed: int, kind: str = "street", *, camera: str | None = None) -> Scene:
    """A random scene of ``kind`` ("street" | "indoor") seen by a random camera.

    ``camera`` = "kitti" (1242x375, fx 700-730, height 1.4-1.9 m) or "phone" (4:3, 65-75 deg HFOV);
    None picks kitti for most street scenes and phone otherwise.
    """
    if kind not in SCENE_KINDS:
        raise InputError(f"scene kind {kind!r}: unknown (choose from {', '.join(SCENE_KINDS)})")
    rng = np.random.default_rng(seed)
    if camera is None:
        camera = "kitti" if (kind == "street" and rng.random() < 0.7) else "phone"
    K, height, width = _camera(rng, camera)
    if kind == "street":
        cam_h = rng.uniform(1.4, 1.9) if camera == "kitti" else rng.uniform(1.2, 1.8)
        parts = _street_parts(rng, cam_h)
        pitch = 2.0 if camera == "kitti" else 10.0
        rot = _view_rotation(rng, pitch, 1.5, 8.0)
    else:
        cam_h = rng.uniform(1.1, 1.7)
        parts = _indoor_parts(rng, cam_h)
        rot = _view_rotation(rng, 15.0, 3.0, 25.0)
    for p in parts:
        p.mesh.apply_transform(rot)
    # Sun from above, in front or behind; ambient so shadowed sides are not black.
    sun = np.array([rng.uniform(-1, 1), rng.uniform(0.4, 1.0), rng.uniform(-1, 1)])
    sun = (rot[:3, :3] @ (sun / np.linalg.norm(sun)))
    sky_top = np.clip(np.array([80, 130, 205]) + rng.uniform(-40, 40, 3), 0, 255).astype(np.uint8)
    sky_horizon = np.clip(np.array([205, 215, 228]) + rng.uniform(-30, 25, 3), 0, 255).astype(np.uint8)
    sun_intensity, ambient = float(rng.uniform(2.0, 5.0)), float(rng.uniform(0.25, 0.5))
    if rng.random() < 0.3:  # overcast or over-exposed: a near-white sky, soft light
        sky_top = np.clip(sky_horizon.astype(int) + rng.integers(-10, 30), 0, 255).astype(np.uint8)
        sun_intensity, ambient = float(rng.uniform(0.8, 2.0)), float(rng.uniform(0.45, 0.8))
    return Scene(parts=parts, K=K, height=height, width=width, kind=kind, seed=int(seed),
                 sun_direction=sun, sun_intensity=sun_intensity, ambient=ambient,
                 sky_top=sky_top, sky_horizon=sky_horizon)


# ----------------------------------------------------------------------------------------------- rendering
_GL = threading.local()  # per-thread GL facts (the depth sample offset is measured per context)


def _renderer(width: int, height: int):
    from tasks.gl import offscreen_renderer

    return offscreen_renderer(width, height)


def _uv_and_normals(mesh: trimesh.Trimesh, tile_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unshared vertices with flat normals and planar UVs: each face is mapped onto the plane of its two
    axes least aligned with its normal, in units of ``tile_m`` metres per texture repeat."""
    tri = mesh.triangles.reshape(-1, 3)
    normals = np.repeat(mesh.face_normals, 3, axis=0)
    axis = np.argmax(np.abs(normals), axis=1)
    keep = np.array([[1, 2], [0, 2], [0, 1]])[axis]
    uv = np.take_along_axis(tri, keep, axis=1) / tile_m
    return tri.astype(np.float32), normals.astype(np.float32), uv.astype(np.float32)


def _pyrender_scene(scene: Scene, calibrating: bool = False):
    import tasks.compat  # noqa: F401
    import pyrender

    pr = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[scene.ambient] * 3)
    sampler = pyrender.Sampler(wrapS=pyrender.constants.GLTF.REPEAT, wrapT=pyrender.constants.GLTF.REPEAT)
    for p in scene.parts:
        pos, nrm, uv = _uv_and_normals(p.mesh, p.tile_m)
        tex = pyrender.Texture(source=p.texture, source_channels="RGB", sampler=sampler)
        mat = pyrender.MetallicRoughnessMaterial(baseColorTexture=tex, metallicFactor=0.0, roughnessFactor=0.9,
                                                 doubleSided=True)
        prim = pyrender.Primitive(positions=pos, normals=nrm, texcoord_0=uv, material=mat,
                                  indices=np.arange(len(pos), dtype=np.uint32).reshape(-1, 3))
        pr.add(pyrender.Mesh([prim]))
    K = scene.K
    # OpenCV puts pixel i's centre at u = i, i.e. at window coordinate i + 0.5. pyrender's depth comes from
    # one multisample position (driver dependent, e.g. (-1/8, +3/8) px), so shift the principal point by the
    # measured offset: then depth[v, u] is the scene exactly through pixel centre (u, v), like raycast_depth.
    off_x, off_y = (0.0, 0.0) if calibrating else _depth_sample_offset()
    cam = pyrender.IntrinsicsCamera(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2] + 0.5 + off_x,
                                    cy=K[1, 2] + 0.5 + off_y, znear=_ZNEAR, zfar=_ZFAR)
    gl_from_cv = np.diag([1.0, -1.0, -1.0, 1.0])  # pyrender cameras look down -z with y up
    pr.add(cam, pose=gl_from_cv)
    # A directional light shines along its node's -z axis: build a pose whose -z is the sun direction.
    d = scene.sun_direction / np.linalg.norm(scene.sun_direction)
    z = -d
    x = np.cross([0.0, 1.0, 0.0], z)
    x = x / np.linalg.norm(x) if np.linalg.norm(x) > 1e-6 else np.array([1.0, 0.0, 0.0])
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    pr.add(pyrender.DirectionalLight(color=np.ones(3), intensity=scene.sun_intensity), pose=pose)
    return pr


def _depth_sample_offset() -> tuple[float, float]:
    """Where, relative to the pixel centre, this GL driver takes the depth it returns (x right, y down, px).

    Measured once per thread by rendering a floor (y = 1) and a side wall (x = 1) whose exact depth per pixel
    is known in closed form: z = f / (v_sample - cy) and z = f / (u_sample - cx).
    """
    cached = getattr(_GL, "depth_offset", None)
    if cached is not None:
        return cached
    size, f, c = 64, 40.0, 20.0
    tex = np.full((2, 2, 3), 128, np.uint8)
    probe = Scene(parts=[Part(_box([60.0, 0.2, 60.0], [0.0, 1.1, 30.0]), tex, 1.0),
                         Part(_box([0.2, 60.0, 60.0], [1.1, 0.0, 30.0]), tex, 1.0)],
                  K=np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]]), height=size, width=size,
                  kind="street", seed=0, sun_direction=np.array([0.0, 1.0, 0.0]), sun_intensity=1.0, ambient=0.5)
    _, depth = _renderer(size, size).render(_pyrender_scene(probe, calibrating=True))
    # With cx_gl = cx + 0.5 an ideal centre sample would give u_sample == u exactly.
    rows = np.arange(40, 60)
    cols = np.arange(40, 60)
    off_y = float(np.median(f / depth[rows, 5] + c - rows))
    off_x = float(np.median(f / depth[5, cols] + c - cols))
    _GL.depth_offset = (off_x, off_y)
    return _GL.depth_offset


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise ``scene``: (rgb uint8 HxWx3, depth float32 HxW metres z-depth, 0 = sky / nothing)."""
    from pyrender import RenderFlags

    pr = _pyrender_scene(scene)
    # Cast shadows: real photos are full of them (trees and cars on the road), and a flat road must stay
    # flat to the network whatever falls on it. Shadows change colour only, never depth.
    colour, depth = _renderer(scene.width, scene.height).render(pr, flags=RenderFlags.SHADOWS_DIRECTIONAL)
    depth = np.asarray(depth, np.float32).copy()
    rgb = np.asarray(colour[..., :3], np.uint8).copy()
    sky = depth <= 0
    if sky.any():  # vertical gradient + soft cloud noise where no geometry was hit
        rng = np.random.default_rng(scene.seed ^ 0x5CA1AB1E)
        rows = np.linspace(0.0, 1.0, scene.height)[:, None, None] ** 0.7
        grad = scene.sky_top * (1 - rows) + scene.sky_horizon * rows
        clouds = np.kron(rng.random((scene.height // 32 + 2, scene.width // 32 + 2)), np.ones((32, 32)))
        clouds = clouds[: scene.height, : scene.width, None]
        sky_img = np.clip(grad + 40 * np.clip(clouds - 0.6, 0, None), 0, 255).astype(np.uint8)
        rgb[sky] = sky_img[sky]
    return rgb, depth


def pixel_rays(K: np.ndarray, height: int, width: int) -> np.ndarray:
    """Unit-z ray directions (H*W, 3) through every pixel centre (OpenCV: centre of pixel (u, v) at (u, v))."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)


def raycast_depth(scene: Scene) -> np.ndarray:
    """True z-depth (float32 HxW, 0 = no hit) by intersecting a ray per pixel centre with the mesh (Embree)."""
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    dirs = pixel_rays(scene.K, scene.height, scene.width)
    origins = np.zeros_like(dirs)
    locations, index_ray, _ = RayMeshIntersector(scene.mesh).intersects_location(origins, dirs,
                                                                                 multiple_hits=False)
    depth = np.zeros(scene.height * scene.width, np.float32)
    depth[index_ray] = locations[:, 2]
    if (depth < 0).any():
        raise GeometryError(f"scene seed {scene.seed}: ray cast hit geometry behind the camera")
    return depth.reshape(scene.height, scene.width)


def true_lidar_scan(scene: Scene, profile, seed: int):
    """The LiDAR scan a sensor ``profile`` would return from the TRUE scene geometry (tasks.lidar)."""
    from tasks.lidar import simulate_lidar_on_mesh

    return simulate_lidar_on_mesh(scene.mesh, scene.K, scene.height, scene.width, profile, seed=seed)


def resized(scene: Scene, height: int, width: int) -> Scene:
    """The same scene seen by the same camera at another resolution (intrinsics scaled about pixel edges)."""
    sx, sy = width / scene.width, height / scene.height
    K = scene.K.copy()
    K[0, 0] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return Scene(parts=scene.parts, K=K, height=int(height), width=int(width), kind=scene.kind, seed=scene.seed,
                 sun_direction=scene.sun_direction, sun_intensity=scene.sun_intensity, ambient=scene.ambient,
                 sky_top=scene.sky_top, sky_horizon=scene.sky_horizon)
