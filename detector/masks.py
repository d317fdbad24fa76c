"""Instance masks as COCO RLE: encode, decode, area, polygons. Thin layer over pycocotools."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

Rle = dict[str, Any]


def encode(mask: np.ndarray) -> Rle:
    """Boolean/uint8 ``H x W`` mask -> compressed RLE with ASCII ``counts`` (JSON-ready)."""
    m = np.asfortranarray(mask.astype(np.uint8, copy=False))
    rle = mask_utils.encode(m)
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def crop_transitions(crop: np.ndarray, x0: int, y0: int, height: int) -> np.ndarray:
    """Where a mask changes value, as column-major flat indices into the full ``height``-row image.

    ``crop`` is the mask's ``h x w`` window at ``(x0, y0)``; everything outside it is 0. Cost is
    proportional to the window, not the image (a full-image encode scans every pixel).
    """
    hc, wc = crop.shape
    if hc == 0 or wc == 0:
        return np.zeros(0, dtype=np.int64)
    padded = np.zeros((wc, hc + 2), dtype=np.int8)
    padded[:, 1:-1] = crop.T
    j, i = np.nonzero(np.diff(padded, axis=1))
    return (x0 + j).astype(np.int64) * height + (y0 + i)


def from_transitions(t: np.ndarray, height: int, width: int) -> Rle:
    """Compressed RLE from sorted change positions (column-major flat indices).

    A run that ends at the bottom of one column and restarts at the top of the next appears as
    the same index twice; the pair cancels (the run goes on).
    """
    height, width = int(height), int(width)
    t = _clean(t, height, width)
    counts = np.diff(np.concatenate(([0], t, [height * width])))
    c = mask_utils.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
    return {"size": [height, width], "counts": c["counts"].decode("ascii")}


def _clean(t: np.ndarray, height: int, width: int) -> np.ndarray:
    """Drop the end mark at the image's end and cancel run joins across columns (see below)."""
    t = np.asarray(t, dtype=np.int64)
    if len(t) and t[-1] >= height * width:
        t = t[:-1]
    if len(t) > 1:
        dup = t[1:] == t[:-1]
        if dup.any():
            keep = np.ones(len(t), dtype=bool)
            keep[1:][dup] = False
            keep[:-1][dup] = False
            t = t[keep]
    return t


def encode_crop(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> Rle:
    """RLE of a full ``height x width`` mask that is 0 outside ``crop`` placed at ``(x0, y0)``."""
    return from_transitions(crop_transitions(crop, x0, y0, height), height, width)


def to_pycocotools(rle: Rle) -> dict:
    """Any RLE (uncompressed, or compressed with str or bytes counts) as pycocotools' C functions
    (``iou``, ``merge``, ``area``, ...) take it: compressed, bytes counts."""
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return mask_utils.frPyObjects(rle, rle["size"][0], rle["size"][1])
    if isinstance(counts, str):
        return {"size": rle["size"], "counts": counts.encode("ascii")}
    return rle


def decode(rle: Rle) -> np.ndarray:
    """RLE (compressed or not) -> ``H x W`` uint8 mask of 0/1."""
    return mask_utils.decode(to_pycocotools(rle))


def compress(rle: Rle) -> Rle:
    """Any RLE -> compressed RLE with ASCII counts."""
    c = to_pycocotools(rle)
    counts = c["counts"]
    return {"size": [int(c["size"][0]), int(c["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def area(rle: Rle) -> int:
    return int(mask_utils.area(to_pycocotools(rle)))


def bbox_xyxy(rle: Rle) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in mask_utils.toBbox(to_pycocotools(rle)))
    return (x, y, x + w, y + h)


def from_polygons(polygons: list[list[float]], height: int, width: int) -> Rle:
    """COCO polygon list (one list per part) -> one merged compressed RLE."""
    parts = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return compress(mask_utils.merge(parts))


def from_box(box: tuple[float, float, float, float], height: int, width: int) -> Rle:
    x1, y1, x2, y2 = box
    m = np.zeros((height, width), dtype=np.uint8)
    m[max(0, int(round(y1))):max(0, int(round(y2))), max(0, int(round(x1))):max(0, int(round(x2)))] = 1
    return encode(m)


def _bridge(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Join a hole into its outer ring with a zero-width cut, so even-odd filling keeps the hole."""
    d = ((outer[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    hole_loop = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outer[: i + 1], hole_loop, outer[i:]])


def counts(rle: Rle) -> list[int]:
    """The run lengths of an RLE (COCO's compressed string decoded, as pycocotools' rleFrString)."""
    c = rle["counts"]
    if isinstance(c, list):
        return [int(v) for v in c]
    s = c.encode("ascii") if isinstance(c, str) else c
    out: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            ch = s[p] - 48
            x |= (ch & 0x1F) << (5 * k)
            more = bool(ch & 0x20)
            p += 1
            k += 1
            if not more and ch & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def decode_crop(rle: Rle) -> tuple[np.ndarray, int, int]:
    """(the mask inside its bounding box, x0, y0): no full-image array is made, the work is
    proportional to the number of runs (a small object in a 12-megapixel photo costs little)."""
    h = int(rle["size"][0])
    runs = np.asarray(counts(rle), dtype=np.int64)
    ends = np.cumsum(runs)
    starts = ends - runs
    on = np.arange(len(runs)) % 2 == 1
    starts, ends = starts[on], ends[on]
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if not len(starts):
        return np.zeros((0, 0), dtype=np.uint8), 0, 0
    # split runs that cross a column boundary, so each piece lies in one column
    pieces_s, pieces_e = [], []
    for a, b in zip(starts.tolist(), ends.tolist()):
        while a // h != (b - 1) // h:
            nxt = (a // h + 1) * h
            pieces_s.append(a)
            pieces_e.append(nxt)
            a = nxt
        pieces_s.append(a)
        pieces_e.append(b)
    ps, pe = np.array(pieces_s), np.array(pieces_e)
    col, r0 = ps // h, ps % h
    r1 = r0 + (pe - ps)
    x0, y0 = int(col.min()), int(r0.min())
    crop = np.zeros((int(r1.max()) - y0, int(col.max()) - x0 + 1), dtype=np.uint8)
    for c, a, b in zip((col - x0).tolist(), (r0 - y0).tolist(), (r1 - y0).tolist()):
        crop[a:b, c] = 1
    return crop, x0, y0


def rle_to_polygons(rle: Rle) -> list[list[float]]:
    """``to_polygons`` of an RLE mask, traced on its bounding box only."""
    crop, x0, y0 = decode_crop(rle)
    if not crop.size:
        return []
    return [[v + (x0 if i % 2 == 0 else y0) for i, v in enumerate(p)] for p in to_polygons(crop)]


def to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Trace a mask into COCO polygons that pycocotools fills back to exactly the same pixels.

    Vertices lie on pixel corners, not centres (a polygon through the centres of a 10 x 10 square
    fills only 9 x 9). The trick: trace with OpenCV on the mask upsampled 2x; a boundary pixel's
    centre there is a quarter pixel inside the original pixel's corner, so rounding
    ``(u + 0.5) / 2`` gives the corner, for outer rings and holes alike. Only the mask's bounding
    box (plus a pixel) is traced. pycocotools fills a polygon by the even-odd rule, so each hole is
    joined to its outer ring by a zero-width cut; separate parts stay separate polygons of the same
    instance (pycocotools unions them).
    """
    import cv2  # the standard contour tracer; only export with --polygons needs it

    m = np.asarray(mask).astype(bool)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if not len(rows):
        return []
    y0, x0 = int(rows[0]), int(cols[0])
    crop = np.ascontiguousarray(m[y0:rows[-1] + 1, x0:cols[-1] + 1], dtype=np.uint8)
    up = np.pad(np.kron(crop, np.ones((2, 2), dtype=np.uint8)), 1)  # 2x, one empty pixel around
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    offset = np.array([x0, y0], dtype=np.float64)

    def corners(contour: np.ndarray) -> np.ndarray:
        pts = np.floor((contour[:, 0, :].astype(np.float64) - 1 + 0.5) / 2 + 0.5) + offset
        keep = np.ones(len(pts), dtype=bool)
        keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
        pts = pts[keep]
        if len(pts) > 1 and np.all(pts[0] == pts[-1]):
            pts = pts[:-1]
        return pts

    polygons: list[list[float]] = []
    for idx, (_nxt, _prv, child, parent) in enumerate(hierarchy):
        if parent != -1:
            continue
        ring = corners(contours[idx])
        c = child
        while c != -1:
            hole = corners(contours[c])
            if len(hole) >= 3:
                ring = _bridge(ring, hole)
            c = hierarchy[c][0]
        if len(ring) >= 3:
            polygons.append([float(v) for v in ring.reshape(-1)])
    return polygons


def disc(shape: tuple[int, int], points: list[tuple[float, float]], radius: float) -> np.ndarray:
    """Pixels within ``radius`` of a stroke through ``points`` (a brush stroke), as bool H x W."""
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    if not points:
        return out
    pts = [points[0]]
    for p in points[1:]:  # fill gaps between mouse samples
        q = pts[-1]
        n = int(math.hypot(p[0] - q[0], p[1] - q[1]) / max(1.0, radius / 2)) + 1
        pts += [(q[0] + (p[0] - q[0]) * t / n, q[1] + (p[1] - q[1]) * t / n) for t in range(1, n + 1)]
    r = int(math.ceil(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    kernel = (xx ** 2 + yy ** 2) <= radius ** 2
    for x, y in pts:
        cx, cy = int(round(x - 0.5)), int(round(y - 0.5))
        x0, y0 = max(0, cx - r), max(0, cy - r)
        x1, y1 = min(w, cx + r + 1), min(h, cy + r + 1)
        if x0 < x1 and y0 < y1:
            out[y0:y1, x0:x1] |= kernel[y0 - (cy - r):y1 - (cy - r), x0 - (cx - r):x1 - (cx - r)]
    return out


def shift(m: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``m`` moved by (dx, dy) pixels; what leaves the image is lost, what enters is empty."""
    out = np.zeros_like(m)
    h, w = m.shape
    xs, xd = (0, dx) if dx >= 0 else (-dx, 0)
    ys, yd = (0, dy) if dy >= 0 else (-dy, 0)
    cw, ch = w - abs(dx), h - abs(dy)
    if cw > 0 and ch > 0:
        out[yd:yd + ch, xd:xd + cw] = m[ys:ys + ch, xs:xs + cw]
    return out


def brush(mask: Rle | None, box: tuple[float, float, float, float], stroke: np.ndarray,
          erase: bool) -> tuple[Rle, tuple[float, float, float, float]] | None:
    """An instance's (mask, box) after a brush (or eraser) stroke; a box without a mask counts as
    filled. None when nothing would be left. Painting only grows the box; erasing fits it."""
    h, w = stroke.shape
    old = decode(mask).astype(bool) if mask is not None else decode(from_box(box, h, w)).astype(bool)
    new = old & ~stroke if erase else old | stroke
    if not new.any():
        return None
    rle = encode(new)
    if erase:
        return rle, bbox_xyxy(rle)
    start = box if mask is None else bbox_xyxy(rle)
    bx = bbox_xyxy(rle)
    return rle, (min(start[0], bx[0]), min(start[1], bx[1]), max(start[2], bx[2]), max(start[3], bx[3]))


def grow(rle: Rle, px: int) -> Rle | None:
    """The mask with its outline moved out (``px`` > 0) or in (< 0) by ``|px|`` pixels, one
    4-neighbour step a pixel (a square side grows by 2 a step; Edit > Grow / Shrink mask). None
    when shrinking leaves nothing. The work is on the mask's bounding box, not the image."""
    import cv2  # local: the other helpers here need only numpy and pycocotools

    h, w = int(rle["size"][0]), int(rle["size"][1])
    crop, x0, y0 = decode_crop(rle)
    if px == 0 or not crop.size:
        return rle if crop.size else None
    m = abs(int(px)) if px > 0 else 1
    pad = np.pad(crop, m)
    # where the mask meets the image's edge the object goes on past it: no outline to move there
    ch, cw = crop.shape
    if x0 == 0:
        pad[:, :m] = pad[:, m:m + 1]
    if y0 == 0:
        pad[:m] = pad[m:m + 1]
    if x0 + cw == w:
        pad[:, -m:] = pad[:, -m - 1:-m]
    if y0 + ch == h:
        pad[-m:] = pad[-m - 1:-m]
    step = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    pad = (cv2.dilate if px > 0 else cv2.erode)(pad, step, iterations=abs(int(px)))
    if not pad.any():
        return None
    X0, Y0 = x0 - m, y0 - m
    # the grown part beyond the image's edges is cut off
    a, b = max(0, -Y0), max(0, -X0)
    pad = pad[a:a + h - max(0, Y0), b:b + w - max(0, X0)]
    return encode_crop(pad.astype(bool), max(0, X0), max(0, Y0), h, w)


def instances_at(instances, xy: tuple[float, float]) -> list:
    """The instances whose mask (box, without one) holds the point ``xy``, highest score first
    (unscored ones first): what a click on a prediction the slider hides shows."""
    x, y = float(xy[0]), float(xy[1])
    out = []
    for inst in instances:
        x1, y1, x2, y2 = inst.box
        if not (x1 <= x <= x2 and y1 <= y <= y2):
            continue
        if inst.mask is not None:
            crop, cx, cy = decode_crop(inst.mask)
            r, c = int(y) - cy, int(x) - cx
            if not (0 <= r < crop.shape[0] and 0 <= c < crop.shape[1] and crop[r, c]):
                continue
        out.append(inst)
    return sorted(out, key=lambda i: -(i.score if i.score is not None else 1.0))


def _xywh(box) -> list[float]:
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def iou_matrix(a: Sequence, b: Sequence) -> np.ndarray:
    """IoU of every object of ``a`` with every one of ``b`` (anything with ``box`` and ``mask``,
    such as Instance): of the masks where both have one, else of the boxes."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    boxes = mask_utils.iou([_xywh(p.box) for p in a], [_xywh(g.box) for g in b], [0] * len(b))
    out = np.asarray(boxes, dtype=float).reshape(len(a), len(b))
    ai = [k for k, p in enumerate(a) if p.mask is not None]
    bi = [k for k, g in enumerate(b) if g.mask is not None]
    if ai and bi:
        m = mask_utils.iou([to_pycocotools(a[k].mask) for k in ai],
                           [to_pycocotools(b[k].mask) for k in bi], [0] * len(bi))
        out[np.ix_(ai, bi)] = np.asarray(m, dtype=float).reshape(len(ai), len(bi))
    return out


def iou(a, b) -> float:
    """Mask IoU of two objects where both have masks, else box IoU."""
    return float(iou_matrix([a], [b])[0, 0])
