"""A mask from one click inside an object: the Click tool's fill.

A box costs a drag (7 s, Papadopoulos et al. 2017) where a click costs 1.75 s. The click says
where the object is and what it looks like (the colour around the click); the region is grown
from it with no model:

1. A window around the click, doubled while its border is still the object's colour (the window
   lies inside the object) or while the region found touches it (the object is larger).
2. The object's colour is the median of a 5 x 5 patch at the click, the ground's the median of
   the window's border. A pixel belongs to the object where it lies past the halfway point from
   the ground's colour to the object's (the half-maximum rule of ``boxfill.half_level_cut``, in
   colour) and near that line (``TUBE``: a neighbour of another hue that happens to be as bright
   is left out).
3. The part connected to the click, its holes filled; where it holds touching objects it is cut
   at the seam between their bright cores (``SEAM``) and at a narrow neck (``NECK``), a
   watershed each, keeping the click's side.

Measured (bench/bench_boxfill.py ``--click``; RESULTS.md, "The Click tool"): on real nuclei a
click's region is right (mask IoU >= 0.75) for ~40 % of objects, and with a box drawn after an
undo where it is wrong, a missed object costs less than drawing its box straight away; on the
demo's shapes nearly every click is right.

Work is on a crop downscaled to at most ``boxfill.MAX_SIDE`` px, so any object costs a few ms.
"""

from __future__ import annotations

import cv2
import numpy as np

from . import masks as M
from .boxfill import MAX_SIDE, Cut, _back, _largest_filled
from .masks import Rle

START_HALF = 12  # the first window's half side, px
MIN_CONTRAST = 12.0  # object and ground colours closer than this (0-255 scale): the window grows
TUBE = 0.15  # how far (share of the object-ground colour distance) a pixel may lie off their line
SEAM = 0.8  # cores: pixels this far from the ground's colour to the object's; one core each object
NECK = 0.5  # cores: pixels deeper inside the region than this share of the click's depth
MIN_CORE = 0.05  # a core counts with at least this share of the region's pixels
MAX_SHARE = 0.5  # a region grown over most of the whole image is its ground, not an object


def _near(labels: np.ndarray, cx: int, cy: int) -> int:
    """The label at (cx, cy), else the nearest non-zero one's (0: none)."""
    if labels[cy, cx] > 0:
        return int(labels[cy, cx])
    ys, xs = np.nonzero(labels > 0)
    if not len(xs):
        return 0
    k = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
    return int(labels[ys[k], xs[k]])


def _watershed(region: np.ndarray, cores: np.ndarray, height: np.ndarray, cx: int, cy: int) -> np.ndarray:
    """``region`` cut into the basins of ``cores`` (labels, 0 none) over ``height`` (high in the
    middle of an object); the basin of the click's core, the seam pixels beside it included."""
    mine = _near(cores, cx, cy)
    n = int(cores.max())
    if mine == 0 or n < 2:
        return region
    markers = cores.astype(np.int32)
    markers[~region] = n + 1
    top = float(height[region].max()) or 1.0
    relief = np.clip(255 - np.clip(height, 0, top) / top * 255, 0, 255).astype(np.uint8)
    cv2.watershed(cv2.cvtColor(relief, cv2.COLOR_GRAY2BGR), markers)
    part = markers == mine
    near = cv2.dilate(part.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return _largest_filled(part | ((markers == -1) & region & near))


def _cores(mask: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Labels of ``mask``'s parts inside ``region`` large enough to be an object's core."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats((mask & region).astype(np.uint8), connectivity=8)
    keep = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] >= MIN_CORE * region.sum()]
    out = np.zeros(lab.shape, np.int32)
    for j, k in enumerate(keep):
        out[lab == k] = j + 1
    return out


def _split_seam(region: np.ndarray, level: np.ndarray, cx: int, cy: int) -> np.ndarray:
    """Touching objects with a darker seam between them: one core each at the high ``SEAM`` level."""
    return _watershed(region, _cores(level > SEAM, region), level, cx, cy)


def _split_neck(region: np.ndarray, cx: int, cy: int) -> np.ndarray:
    """Touching objects joined by a narrow neck: cores deeper than ``NECK`` of the click's depth."""
    depth = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    r = max(1, int(depth[cy, cx] / 2))
    own = float(depth[max(0, cy - r):cy + r + 1, max(0, cx - r):cx + r + 1].max())
    if own < 2:
        return region
    return _watershed(region, _cores(depth > NECK * own, region), depth, cx, cy)


def _region(crop: np.ndarray, cx: int, cy: int) -> tuple[np.ndarray | None, bool]:
    """(the region grown from (cx, cy) in the float RGB ``crop``, or None where nothing stands out;
    whether the window was too small: its border is the object's colour)."""
    patch = crop[max(0, cy - 2):cy + 3, max(0, cx - 2):cx + 3].reshape(-1, 3)
    obj = np.median(patch, axis=0)
    ground = np.median(np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]]), axis=0)
    d = obj - ground
    dd = float(d @ d)
    if np.sqrt(dd) < MIN_CONTRAST:
        return None, True
    rel = crop - ground
    level = (rel @ d) / dd  # 0 at the ground's colour, 1 at the object's
    off = np.linalg.norm(rel - level[..., None] * d, axis=-1)
    fg = (level > 0.5) & (off < TUBE * np.sqrt(dd))
    n, lab = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8)
    k = _near(lab, cx, cy)
    if k == 0:
        return None, False
    ys, xs = np.nonzero(lab == k)
    if np.min((xs - cx) ** 2 + (ys - cy) ** 2) > 9:  # the click is not on or next to it
        return None, False
    region = _largest_filled(lab == k)
    return _split_neck(_split_seam(region, level, cx, cy), cx, cy), False


def click_cut(rgb: np.ndarray, xy: tuple[float, float]) -> Cut | None:
    """The object's mask around the click at ``xy`` (image pixels), None where nothing there
    stands out from its surroundings (module docstring)."""
    h, w = rgb.shape[:2]
    x, y = min(max(float(xy[0]), 0.0), w - 1.0), min(max(float(xy[1]), 0.0), h - 1.0)
    half = START_HALF
    while True:
        X0, Y0 = max(0, int(x - half)), max(0, int(y - half))
        X1, Y1 = min(w, int(x + half) + 1), min(h, int(y + half) + 1)
        whole = X0 == 0 and Y0 == 0 and X1 == w and Y1 == h
        crop = rgb[Y0:Y1, X0:X1].astype(np.float32)
        f = min(1.0, MAX_SIDE / max(crop.shape[:2]))
        if f < 1.0:
            crop = cv2.resize(crop, (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f))),
                              interpolation=cv2.INTER_AREA)
        if crop.shape[0] < 3 or crop.shape[1] < 3:
            return None
        crop = cv2.GaussianBlur(crop, (3, 3), 0)
        cx = min(crop.shape[1] - 1, int((x - X0) * f))
        cy = min(crop.shape[0] - 1, int((y - Y0) * f))
        region, inside = _region(crop, cx, cy)
        if region is not None:
            edge = ((region[0].any() and Y0 > 0) or (region[-1].any() and Y1 < h)
                    or (region[:, 0].any() and X0 > 0) or (region[:, -1].any() and X1 < w))
        if whole or not (inside or (region is not None and edge)):
            if region is None or not region.any() or (whole and region.mean() > MAX_SHARE):
                return None  # nothing, or the ground itself (a click on a shaded background)
            return Cut("click", _back(region, (Y1 - Y0, X1 - X0)), X0, Y0)
        half *= 2


def fill_click(rgb: np.ndarray, xy: tuple[float, float]) -> tuple[Rle, tuple[float, float, float, float]] | None:
    """(the mask, its box) for a click at ``xy``; None where nothing stands out there."""
    cut = click_cut(rgb, xy)
    if cut is None:
        return None
    rle = cut.rle(rgb.shape[0], rgb.shape[1])
    return rle, M.bbox_xyxy(rle)


def click_point(mask: np.ndarray) -> tuple[float, float]:
    """Where a person clicks an object: its deepest point (farthest from its outline), in pixel
    centres. Used by the simulated annotator and the benchmarks."""
    depth = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(x) + 0.5, float(y) + 0.5


SPLIT_AWAY = 1.5  # the instance's own seed lies farther from the click than this many click depths


def split_cut(rgb: np.ndarray, mask: np.ndarray, xy: tuple[float, float]) -> tuple[np.ndarray, np.ndarray] | None:
    """A click with the Click tool inside an instance that holds touching objects: ``mask`` (H x W
    bool, the instance) cut in two, (the part around the click: a new object; the rest: the
    instance's own). None where the click is outside the mask or no second object is there.

    The click's object reaches about its depth (distance to the outline) around the click, so the
    instance's own seed is its deepest point farther than ``SPLIT_AWAY`` depths from the click.
    The cut is a watershed from the two seeds over the colour level (0 at the colour around the
    instance, 1 at the instance's own), so a darker seam between touching objects is the ridge;
    on real nuclei it beat the outline's depth and a mix of the two (bench/RESULTS.md, "Splitting
    a merged region with a second click").
    """
    h, w = mask.shape
    x, y = int(min(max(xy[0], 0), w - 1)), int(min(max(xy[1], 0), h - 1))
    if not mask[y, x]:
        return None
    ys, xs = np.nonzero(mask)
    Y0, Y1 = max(0, int(ys.min()) - 3), min(h, int(ys.max()) + 4)
    X0, X1 = max(0, int(xs.min()) - 3), min(w, int(xs.max()) + 4)
    reg = mask[Y0:Y1, X0:X1]
    crop = rgb[Y0:Y1, X0:X1].astype(np.float32)
    f = min(1.0, MAX_SIDE / max(reg.shape))
    if f < 1.0:
        size = (max(1, round(reg.shape[1] * f)), max(1, round(reg.shape[0] * f)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        reg = cv2.resize(reg.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    cx, cy = min(reg.shape[1] - 1, int((x - X0) * f)), min(reg.shape[0] - 1, int((y - Y0) * f))
    if not reg[cy, cx]:
        return None
    depth = cv2.distanceTransform(np.pad(reg, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    yy, xx = np.mgrid[0:reg.shape[0], 0:reg.shape[1]]
    away = reg & ((xx - cx) ** 2 + (yy - cy) ** 2 > (SPLIT_AWAY * max(float(depth[cy, cx]), 1.0)) ** 2)
    if not away.any():
        return None  # the click's object is all there is
    oy, ox = np.unravel_index(int(np.argmax(np.where(away, depth, -1.0))), depth.shape)
    crop = cv2.GaussianBlur(crop, (3, 3), 0)
    ring = cv2.dilate(reg.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~reg
    obj = np.median(crop[reg], axis=0)
    ground = np.median(crop[ring], axis=0) if ring.any() else np.zeros(3, np.float32)
    d = obj - ground
    level = np.clip(((crop - ground) @ d) / max(float(d @ d), 1e-6), 0.0, 1.0)
    seeds = np.zeros(reg.shape, np.int32)
    cv2.circle(seeds, (int(ox), int(oy)), 1, 1, -1)
    cv2.circle(seeds, (cx, cy), 1, 2, -1)
    new = _watershed(reg, np.where(reg, seeds, 0), level, cx, cy) & reg
    rest = reg & ~new  # may be in pieces: a click on the middle one of three
    if not new.any() or not rest.any():
        return None
    shape = (Y1 - Y0, X1 - X0)
    out = []
    for part in (new, rest):
        full = np.zeros((h, w), bool)
        full[Y0:Y1, X0:X1] = _back(part, shape) & mask[Y0:Y1, X0:X1]
        out.append(full)
    if not out[0].any() or not out[1].any():
        return None
    return out[0], out[1]
