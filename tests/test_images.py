"""tasks.images: decoding, every rejection reason, canvas fitting and intrinsics."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tasks.errors import InputError
from tasks.images import fit_to_canvas, intrinsics_for_canvas, load_image


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(h: int = 24, w: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1).astype(np.uint8)


def test_png_roundtrip_exact(tmp_path):
    rgb = _rgb()
    p = tmp_path / "a.png"
    Image.fromarray(rgb).save(p)
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, rgb)
    np.testing.assert_array_equal(load_image(p.read_bytes(), name="a.png"), rgb)


def test_shared_natural_photo(shared_data):
    out = load_image(shared_data / "natural" / "img01.jpg")
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.jpg.*no such"):
        load_image(tmp_path / "nope.jpg")


def test_zero_byte(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="empty.jpg: zero-byte"):
        load_image(p)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is a text file, not a JPEG\n" * 10)
    with pytest.raises(InputError, match="notes.jpg: not an image"):
        load_image(p)


def test_truncated_jpeg(tmp_path):
    data = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.jpg: truncated"):
        load_image(p)


def test_truncated_png(tmp_path):
    data = _encode(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    with pytest.raises(InputError, match="cut.png: truncated"):
        load_image(data[: len(data) // 2], name="cut.png")


def test_sixteen_bit_gray_png(tmp_path):
    p = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(p)
    with pytest.raises(InputError, match="deep.png: 16-bit"):
        load_image(p)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_sixteen_bit_rgb_png_rejected_from_header():
    # Pillow narrows 48-bit RGB PNGs to 8-bit "RGB"; the IHDR bit depth must still reject it.
    h, w = 4, 5
    raw = b"".join(b"\x00" + np.full((w, 3), 0x1234, dtype=">u2").tobytes() for _ in range(h))
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
           + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    with pytest.raises(InputError, match="rgb48.png: 16-bit"):
        load_image(png, name="rgb48.png")


@pytest.mark.parametrize("mode", ["L", "1", "LA"])
def test_grayscale_rejected(mode):
    im = Image.new(mode, (10, 6))
    with pytest.raises(InputError, match=f"gray.png: grayscale image \\(mode {mode}\\)"):
        load_image(_encode(im, "PNG"), name="gray.png")


def test_too_large_checked_before_decoding():
    # A 20000 x 20000 header with almost no data: the pixel limit must fire before decoding is attempted.
    png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
           + _png_chunk(b"IEND", b""))
    with pytest.raises(InputError, match="huge.png: image too large"):
        load_image(png, name="huge.png")
    with pytest.raises(InputError, match="small-limit.png: image too large \\(32x24"):
        load_image(_encode(Image.fromarray(_rgb()), "PNG"), name="small-limit.png", max_pixels=100)


def test_palette_and_rgba_converted():
    rgb = _rgb()
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    out = load_image(_encode(pal, "PNG"), name="pal.png")
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    out = load_image(_encode(Image.fromarray(rgba), "PNG"), name="rgba.png")
    np.testing.assert_array_equal(out, rgb)


def test_exif_orientation_applied():
    rgb = _rgb(20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    data = _encode(Image.fromarray(rgb), "PNG", exif=exif.tobytes())
    out = load_image(data, name="rot.png")
    assert out.shape == (30, 20, 3)
    np.testing.assert_array_equal(out, np.rot90(rgb, k=-1))


def test_fit_to_canvas_cover_and_centre_crop():
    img = _rgb(100, 400)
    canvas, scale, (ox, oy) = fit_to_canvas(img, 50, 100)
    assert canvas.shape == (50, 100, 3) and canvas.dtype == np.uint8
    assert scale == pytest.approx(0.5)  # height is the binding side: 100 -> 50, width 400 -> 200
    assert (ox, oy) == (50, 0)
    same, s1, off = fit_to_canvas(img, 100, 400)
    np.testing.assert_array_equal(same, img)
    assert s1 == 1.0 and off == (0, 0)


def test_fit_to_canvas_upscale_and_geometry():
    img = np.zeros((10, 10, 3), np.uint8)
    img[:, 5:] = 255  # vertical edge in the middle stays in the middle of a wider canvas
    canvas, scale, (ox, oy) = fit_to_canvas(img, 20, 40)
    assert canvas.shape == (20, 40, 3) and scale == pytest.approx(4.0) and (ox, oy) == (0, 10)
    assert canvas[:, :18].max() < 30 and canvas[:, 22:].min() > 225


def test_fit_to_canvas_rejects_bad_input():
    with pytest.raises(InputError):
        fit_to_canvas(np.zeros((4, 4), np.uint8), 2, 2)
    with pytest.raises(InputError):
        fit_to_canvas(np.zeros((4, 4, 3), np.uint8), 0, 2)


def test_intrinsics_for_canvas():
    K = intrinsics_for_canvas(352, 1216, fx=721.5)
    assert K.dtype == np.float32 and K.shape == (3, 3)
    np.testing.assert_allclose(K, [[721.5, 0, 607.5], [0, 721.5, 175.5], [0, 0, 1]])
    with pytest.raises(InputError):
        intrinsics_for_canvas(10, 10, fx=-1.0)


def _photo(h: int = 600, w: int = 900) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(xx / 37.0), 128 + 100 * np.cos(yy / 23.0), (xx + yy) % 256], -1)
    return img.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [None, (20, 70)])
def test_load_fitted_matches_decode_then_fit(size):
    """The fast path (libjpeg-turbo DCT scaling + crop + OpenCV resample) gives the picture that decoding in
    full and fitting gives, up to resampling differences; the teacher's size stretches the same region."""
    from tasks.images import load_fitted

    data = _encode(Image.fromarray(_photo()), "JPEG", quality=95)
    ref = fit_to_canvas(load_image(data, name="p.jpg"), 60, 200)[0]
    if size:
        ref = np.asarray(Image.fromarray(ref).resize((size[1], size[0]), Image.Resampling.BILINEAR))
    out = load_fitted(data, name="p.jpg", canvas=(60, 200), size=size)
    assert out.shape == ref.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref).mean() < 6
    np.testing.assert_array_equal(out, load_fitted(data, name="p.jpg", canvas=(60, 200), size=size))  # deterministic


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_load_fitted_applies_exif_orientation(fmt):
    from tasks.images import load_fitted

    rgb = _photo(90, 60)  # portrait pixels, shown rotated 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(Image.fromarray(rgb), fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    upright = np.rot90(rgb, k=-1)
    ref = fit_to_canvas(np.ascontiguousarray(upright), 30, 45)[0]
    out = load_fitted(data, name=f"rot.{fmt.lower()}", canvas=(30, 45))
    assert out.shape == (30, 45, 3)
    assert np.abs(out.astype(int) - ref).mean() < 8  # a wrong orientation differs by ~60


def test_load_fitted_rejects_like_load_image():
    from tasks.images import load_fitted

    good = _encode(Image.fromarray(_photo()), "JPEG")
    for data, needle in [(b"", "zero-byte"), (b"not an image", "not an image"), (good[: len(good) // 3], "truncated"),
                         (_encode(Image.fromarray(np.zeros((8, 8), np.uint8), "L"), "PNG"), "grayscale")]:
        with pytest.raises(InputError, match=needle) as exc:
            load_fitted(data, name="bad.jpg", canvas=(10, 20))
        assert "bad.jpg" in str(exc.value)


@pytest.mark.parametrize("ratio", [1.5, 1.74, 2.3, 3.1])
def test_area_reduce_matches_opencv_area_filter(ratio):
    """The fast area reduction (bilinear to k x the output, then a k x k box average) gives INTER_AREA's picture
    on real photos (the demo images) to within rounding-level differences, and the same bytes every time."""
    import cv2

    from flows.build import DEMO_IMAGES
    from tasks.images import area_reduce

    for path in sorted(DEMO_IMAGES.glob("*.jpg"))[:3]:
        photo = load_image(path)
        out_h, out_w = int(photo.shape[0] / ratio), int(photo.shape[1] / ratio)
        ref = cv2.resize(photo, (out_w, out_h), interpolation=cv2.INTER_AREA)
        out = area_reduce(photo, out_h, out_w)
        assert out.shape == ref.shape and out.dtype == np.uint8
        mse = np.mean((out.astype(np.float64) - ref) ** 2)
        assert 10 * np.log10(255.0**2 / mse) > 45.0, path  # measured 48-57 dB; bilinear alone 30-46 dB
        np.testing.assert_array_equal(out, area_reduce(photo, out_h, out_w))


def test_opencv_single_threaded_is_shared_and_restored():
    """Concurrent users share the one-thread setting; it is restored only when the last one leaves, and the
    pixels do not depend on it."""
    import threading

    import cv2

    from tasks.images import load_fitted, opencv_single_threaded

    photo = np.random.default_rng(0).integers(0, 256, (300, 800, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(photo), "JPEG", quality=90)
    cv2.setNumThreads(2)
    reference = load_fitted(data, name="p.jpg", canvas=(64, 256), size=(32, 96))
    inside, release = threading.Event(), threading.Event()

    def other_user():
        with opencv_single_threaded():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other_user)
    with opencv_single_threaded():
        assert cv2.getNumThreads() == 1
        t.start()
        assert inside.wait(10)
        same = load_fitted(data, name="p.jpg", canvas=(64, 256), size=(32, 96))
    assert cv2.getNumThreads() == 1  # the other thread is still inside
    release.set()
    t.join(10)
    assert cv2.getNumThreads() == 2
    assert same.tobytes() == reference.tobytes()


def _with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The same JPEG bytes with an EXIF orientation (an APP1 segment after SOI; the scan is not re-encoded)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = b"Exif\x00\x00" + exif.tobytes()
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def test_jpeg_band_decode_is_bit_identical_to_a_full_decode(monkeypatch):
    """Decoding only the rows down to the canvas band (tasks.jpeg_rows) gives the very pixels of a full
    decode, for every chroma subsampling, the row-preserving EXIF orientations, DCT scales 1 to 1/8 and
    heights that are not whole MCU rows; and it is the path taken."""
    import simplejpeg

    import tasks.images as ti

    photo = np.random.default_rng(3).integers(0, 256, (333, 517, 3), dtype=np.uint8)
    photo = (photo // 4 + _photo(333, 517) // 4 * 3).astype(np.uint8)  # texture + noise, as in a real photo
    bands = []
    real_with_height = ti.with_height
    monkeypatch.setattr(ti, "with_height", lambda d, f, rows: bands.append(rows) or real_with_height(d, f, rows))
    cases = 0
    for sub in ("444", "422", "420", "440", "411"):
        base = simplejpeg.encode_jpeg(photo, quality=90, colorsubsampling=sub)
        for orientation in (1, 2, 3, 4):
            data = base if orientation == 1 else _with_orientation(base, orientation)
            for canvas, size in [((100, 400), None), ((100, 400), (50, 150)), ((100, 400), (20, 60)),
                                 ((100, 400), (12, 40)), ((60, 100), None)]:
                band = ti.load_fitted(data, name="p.jpg", canvas=canvas, size=size)
                with monkeypatch.context() as m:
                    m.setattr(ti, "sequential_frame", lambda d: None)  # the full, strict decode
                    full = ti.load_fitted(data, name="p.jpg", canvas=canvas, size=size)
                np.testing.assert_array_equal(band, full, err_msg=f"{sub} orientation {orientation} {canvas} {size}")
                cases += 1
    assert len(bands) >= cases * 3 // 5 and all(rows < 333 for rows in bands)  # 60x100 keeps most rows


def test_jpeg_band_decode_still_rejects_a_cut_file():
    """A file cut below the canvas band is never read there by the decoder; it is rejected all the same."""
    from tasks.images import load_fitted
    from tasks.jpeg_rows import sequential_frame

    good = _encode(Image.fromarray(_photo(600, 900)), "JPEG", quality=95)
    assert sequential_frame(good) is not None
    for cut in (len(good) - 2, len(good) * 9 // 10, len(good) // 2):
        with pytest.raises(InputError, match="cut.jpg: truncated or corrupt"):
            load_fitted(good[:cut], name="cut.jpg", canvas=(100, 400))
    # Data after the end of the image (a motion photo's video, a second image) is not damage.
    np.testing.assert_array_equal(load_fitted(good + b"\x00trailer" * 100, name="p.jpg", canvas=(100, 400)),
                                  load_fitted(good, name="p.jpg", canvas=(100, 400)))


def test_sequential_frame_only_for_single_scan_sequential_jpegs():
    from tasks.jpeg_rows import rows_kept, sequential_frame, with_height

    photo = Image.fromarray(_photo(250, 300))
    baseline = _encode(photo, "JPEG", quality=90)  # Pillow's default: 4:2:0, so 16-row MCUs
    frame = sequential_frame(baseline)
    assert frame is not None and frame.height == 250 and frame.mcu_rows == 16
    assert rows_kept(frame, 100) == 112 + 32 and rows_kept(frame, 240) == 250
    assert Image.open(io.BytesIO(with_height(baseline, frame, 144))).size == (300, 144)
    assert sequential_frame(_encode(photo, "JPEG", quality=90, progressive=True)) is None
    assert sequential_frame(_encode(photo, "JPEG", quality=90, subsampling=0)).mcu_rows == 8
    assert sequential_frame(_encode(photo, "PNG")) is None
    assert sequential_frame(baseline[:100]) is None  # header cut before the scan
