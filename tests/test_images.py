import time

import numpy as np
import pytest
from PIL import Image

from detector.images import ImageReadError, load_image, read_size, scan_folder, stretch_contrast
from detector.store import Project
from detector.domain import ImageStatus


def _exif_rotated(path, orientation=6):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 10, 20))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, exif=exif.tobytes())


def test_exif_rotation_applied_to_size_and_pixels(tmp_path):
    p = tmp_path / "rot.jpg"
    _exif_rotated(p)
    assert read_size(p) == (20, 40)  # displayed size: rotated by 90 degrees
    a = load_image(p)
    assert a.shape == (40, 20, 3)
    # orientation 6 = rotate 90 CW to display: the left stripe ends up on top
    assert a[:5, :, 2].mean() > 200 and a[-5:, :, 0].mean() > 200


def test_sixteen_bit_and_modes_become_rgb(tmp_path):
    a16 = (np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 20)
    Image.fromarray(a16).save(tmp_path / "deep.png")
    rgb = load_image(tmp_path / "deep.png")
    assert rgb.shape == (32, 64, 3) and rgb.dtype == np.uint8
    assert rgb.max() == 255 and rgb.min() == 0  # its range maps onto 0-255
    # Nuclei at 100-1000 of 65535 with one saturated pixel: they keep ~230 of the 256 levels (the
    # image's maximum as 255 left them 4), and the pixel saturates.
    cells = np.random.default_rng(0).integers(100, 1001, (40, 50)).astype(np.uint16)
    cells[0, 0] = 65535
    Image.fromarray(cells).save(tmp_path / "cells.png")
    rgb = load_image(tmp_path / "cells.png")
    assert len(np.unique(rgb[..., 0])) > 200 and rgb[0, 0, 0] == 255
    low = np.full((8, 8), 200, np.uint16)  # values within 0-255 stay as they are
    low[0, 0] = 30
    Image.fromarray(low).save(tmp_path / "low.png")
    assert load_image(tmp_path / "low.png")[..., 0].tolist() == low.tolist()
    spots = np.zeros((60, 60), np.uint16)  # sparse spots on zeros: the maximum becomes 255
    spots[5, 5], spots[9, 9] = 4000, 2000
    Image.fromarray(spots).save(tmp_path / "spots.png")
    rgb = load_image(tmp_path / "spots.png")
    assert (rgb[5, 5, 0], rgb[9, 9, 0], rgb[0, 0, 0]) == (255, 128, 0)
    # Float images: 0-1 is the float convention (scaled by 255, not shown black), NaN shows black,
    # negative values (a difference image, a depth offset) are stretched, not cut at 0.
    ramp = np.linspace(0, 1, 64 * 8, dtype=np.float32).reshape(8, 64)
    ramp[0, 0] = np.nan
    Image.fromarray(ramp, mode="F").save(tmp_path / "float.tif")
    rgb = load_image(tmp_path / "float.tif")
    assert rgb[..., 0].max() == 255 and rgb[0, 0, 0] == 0 and rgb[4, 32, 0] == round(ramp[4, 32] * 255)
    signed = np.linspace(-500, 500, 40 * 40, dtype=np.float32).reshape(40, 40)
    Image.fromarray(signed, mode="F").save(tmp_path / "signed.tif")
    rgb = load_image(tmp_path / "signed.tif")
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and 120 <= rgb[20, 0, 0] <= 135
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    assert (load_image(tmp_path / "alpha.png") == 255).all()  # transparent shows as white
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert load_image(tmp_path / "cmyk.jpg").shape == (8, 8, 3)
    Image.new("P", (8, 8), 3).save(tmp_path / "pal.png")
    assert load_image(tmp_path / "pal.png").shape == (8, 8, 3)
    Image.new("L", (8, 8), 7).save(tmp_path / "gray.bmp")
    assert (load_image(tmp_path / "gray.bmp") == 7).all()


def test_bad_files_are_named_and_explained(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, quality=95)
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    for name, words in [("empty.png", "empty"), ("text.jpg", "not an image"),
                        ("trunc.jpg", "truncated"), ("missing.png", "not found")]:
        with pytest.raises(ImageReadError) as e:
            load_image(tmp_path / name)
        assert name in str(e.value) and words in str(e.value)


def test_unreadable_files_are_flagged_not_fatal(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_text("nope")
    with Project(tmp_path) as p:
        p.scan()
        recs = {r.path: p.ensure_size(r) for r in p.images()}
        assert recs["ok.png"].width == 10
        assert recs["bad.png"].status is ImageStatus.UNREADABLE
        assert "not an image" in p.image_by_path("bad.png").reason


def test_scan_ten_thousand_files_reads_no_pixels(tmp_path):
    # The files are not even valid images: scanning must not open them.
    for i in range(100):
        d = tmp_path / f"d{i:02d}"
        d.mkdir()
        for j in range(100):
            (d / f"img_{j:03d}.jpg").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("skip me")
    t = time.perf_counter()
    files = scan_folder(tmp_path)
    assert len(files) == 10_000
    with Project(tmp_path) as p:
        r = p.scan()
        assert r.added == 10_000 and r.total == 10_000
        assert p.status_counts()[ImageStatus.NEW] == 10_000
        assert p.images()[0].width is None  # sizes are read lazily
        assert p.scan().added == 0
    print(f"scanned 10,000 files into the store in {time.perf_counter() - t:.2f}s")


def test_auto_contrast_stretches_dim_images_and_leaves_photos_as_they_are():
    rng = np.random.default_rng(0)
    # A dim fluorescence-like image: background ~4, nuclei at 20-40, one hot pixel at 250.
    dim = np.clip(rng.normal(4, 1, (120, 160, 3)), 0, 255).astype(np.uint8)
    dim[30:60, 40:80] = (20, 30, 40)
    dim[0, 0] = (250, 250, 250)
    out = stretch_contrast(dim)
    assert out.shape == dim.shape and out.dtype == np.uint8
    r, g, b = (int(v) for v in out[45, 60])
    assert b == 255  # the nuclei's brightest channel (40) is the top of the stretched range
    # One stretch for all channels (the darkest 0.2 %, ~1, to black): (20-1)*255/39, (30-1)*255/39.
    assert 115 <= r <= 135 and 180 <= g <= 200, (r, g, b)
    assert out[0, 0].tolist() == [255, 255, 255]  # the hot pixel saturates, it does not set the scale
    assert np.median(out[80:, :, 0]) < 40  # the background stays dark
    # A photo-like image spanning most of the range, and an image of one value: untouched.
    photo = rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)
    assert stretch_contrast(photo) is photo
    flat = np.full((10, 10, 3), 7, np.uint8)
    assert stretch_contrast(flat) is flat
    assert stretch_contrast(photo, below=256) is not photo  # below=256: always stretched
    assert np.array_equal(stretch_contrast(dim, below=10), dim)
