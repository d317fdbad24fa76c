"""Reading image files: headers for sizes, full decode to RGB with EXIF orientation applied."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import LoupeError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Orientations 5-8 rotate by 90 degrees: width and height swap.
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
# Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; we refuse above it outright.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 178_956_970
# Auto contrast for the screen: a fraction of the pixels at each end may saturate (ImageJ's
# "Auto" leaves 0.35 % in all; napari and CVAT offer the same kind of stretch). Only images whose
# values span less than DIM_RANGE levels are stretched: dim fluorescence (nuclei at 10-40 of 255)
# becomes visible, while photos, which span most of the range, stay as they are stored. 16-bit
# images reach 8 bits through the same clip (_to_rgb).
STRETCH_CLIP = 0.002
DIM_RANGE = 128


class ImageReadError(LoupeError):
    """An image file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read (wrong extension or not an image)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large (over {MAX_PIXELS:,} pixels); refusing to decode it"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and "truncated" in str(exc).lower():
        return "truncated or corrupt image data"
    return f"{type(exc).__name__}: {exc}"


def read_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) as displayed, from the header only (no pixel decode)."""
    try:
        if os.path.getsize(path) == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise ImageReadError(path, f"image too large ({w}x{h}); refusing to decode it")
            try:
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # a broken EXIF block is not a broken image
                orientation = 1
    except ImageReadError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageReadError(path, _describe(exc)) from exc
    return (h, w) if orientation in _SWAPPING_ORIENTATIONS else (w, h)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grayscale (microscopy, depth) to 8 bits: values within 0-255 stay as they
        # are, and float images within 0-1 (the float convention of scikit-image and tifffile) are
        # scaled by 255; otherwise the darkest and brightest 0.2 % (STRETCH_CLIP) become 0 and 255,
        # so one saturated pixel at 65535 does not squeeze nuclei at 100-1000 into 4 levels (as
        # scaling by the maximum did). Where those ends meet (sparse spots on zeros), the image's
        # own range is used. NaN and infinite values (masked-out float pixels) show as black.
        a = np.asarray(im, dtype=np.float64)
        finite = np.isfinite(a)
        values = a[finite] if not finite.all() else a.ravel()
        bottom = float(values.min()) if values.size else 0.0
        top = float(values.max()) if values.size else 0.0
        lo, hi = 0.0, 255.0
        if im.mode == "F" and bottom >= 0.0 and 0.0 < top <= 1.0:
            hi = 1.0
        elif bottom < 0.0 or top > 255.0:
            lo, hi = (float(v) for v in np.percentile(values, (100 * STRETCH_CLIP, 100 * (1 - STRETCH_CLIP))))
            if hi <= lo:
                lo, hi = bottom, max(top, bottom + 1.0)
        a = np.where(finite, a, lo)
        a8 = np.clip(np.rint((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Composite transparent pixels on white, as viewers show them.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


@contextmanager
def _decoding(path: str | os.PathLike) -> Iterator[Image.Image]:
    """Open ``path`` for a pixel decode; every failure becomes an ImageReadError naming the file."""
    try:
        if os.path.getsize(path) == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > MAX_PIXELS:
                    raise ImageReadError(path, f"image too large ({im.size[0]}x{im.size[1]}); "
                                         "refusing to decode it")
                yield im
    except ImageReadError:
        raise
    except Image.DecompressionBombWarning as exc:
        raise ImageReadError(path, "image too large; refusing to decode it") from exc
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise ImageReadError(path, _describe(exc)) from exc


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode to an ``H x W x 3`` uint8 RGB array with EXIF orientation applied."""
    with _decoding(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im) or im
        return np.asarray(_to_rgb(im), dtype=np.uint8).copy()


def load_thumbnail(path: str | os.PathLike, size: int = 64) -> np.ndarray:
    """A small ``h x w x 3`` uint8 RGB preview (longer side at most ``size``), EXIF applied.

    JPEGs are decoded at a reduced scale (``Image.draft``), so a thumbnail costs a fraction of a
    full decode.
    """
    with _decoding(path) as im:
        im.draft("RGB", (size, size))
        im.load()
        im = _to_rgb(ImageOps.exif_transpose(im) or im)
        im.thumbnail((size, size))
        return np.asarray(im, dtype=np.uint8).copy()


def stretch_bounds(counts: np.ndarray, clip: float = STRETCH_CLIP, below: int = DIM_RANGE) -> tuple[int, int] | None:
    """(lo, hi) bins of a histogram ``counts`` between which all but the lowest and the highest
    ``clip`` of the values lie, when they are fewer than ``below`` bins apart (256 bins of 8-bit
    values: a dim image); None otherwise, or for an image of one value. The rule the screen's auto
    contrast (``stretch_contrast``) and the model's input (``detector.heads.stretch_dim``) share."""
    cum = np.cumsum(counts)
    total = float(cum[-1]) if len(cum) else 0.0
    lo = int(np.searchsorted(cum, clip * total, side="right"))
    hi = int(np.searchsorted(cum, (1.0 - clip) * total, side="left"))
    return (lo, hi) if lo < hi and hi - lo < below else None


def stretch_contrast(rgb: np.ndarray, clip: float = STRETCH_CLIP, below: int = DIM_RANGE) -> np.ndarray:
    """``rgb`` (``H x W x 3`` uint8) with its intensities stretched to 0-255 for display, if dim.

    The darkest ``clip`` and the brightest ``clip`` of the values (all channels together, so a
    colour keeps its hue) become 0 and 255 and the rest is scaled linearly between them, when
    those two ends are fewer than ``below`` levels apart (256: always; ``stretch_bounds``).
    Otherwise, or for an image of one value, ``rgb`` itself is returned.
    """
    im = Image.fromarray(rgb)  # Pillow's histogram and lookup run in C: ~0.1 s for 12 MP
    bounds = stretch_bounds(np.asarray(im.histogram()).reshape(3, 256).sum(axis=0), clip, below)
    if bounds is None:
        return rgb
    lo, hi = bounds
    levels = np.arange(256, dtype=np.float64)
    lut = np.clip(np.rint((levels - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8).tolist()
    return np.array(im.point(lut * 3), dtype=np.uint8)


def iter_folder(root: str | os.PathLike) -> Iterator[tuple[str, float, int]]:
    """Image files under ``root`` (recursive) as they are found, folder by folder in name order:
    (relative path with '/', mtime, bytes).

    Only directory entries are read: no file is opened, so 10,000 files take well under a second.
    Hidden folders (``.loupe``, ``.git``) are skipped.
    """
    root = Path(root)
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    subdirs.append(Path(e.path))
                elif is_image_name(e.name) and e.is_file():
                    st = e.stat()
                    yield Path(e.path).relative_to(root).as_posix(), st.st_mtime, st.st_size
            except OSError:
                continue
        stack.extend(reversed(subdirs))  # the first sub-folder is read next


def scan_folder(root: str | os.PathLike) -> list[tuple[str, float, int]]:
    """All image files under ``root``, sorted by relative path (see ``iter_folder``)."""
    return sorted(iter_folder(root), key=lambda t: t[0])
