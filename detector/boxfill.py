"""A mask for a box the person drew: the model's, or a classical cut where that fits the box better.

A box drawn with the Box tool is tight around one object, so the object's mask touches the box on
all four sides: how well a candidate mask's own bounding box matches the drawn box (``box_fit``,
an IoU) says, without any ground truth, whether the candidate found the object. The candidates:

- the model's mask (its second stage run on the box: ``Predictor.predict_in_boxes``);
- GrabCut (OpenCV's ``grabCut`` from the box: colour models of the object and its surroundings,
  made for photos);
- a threshold inside the box (Otsu's, the object on the side the box's border is not on, its
  largest part, holes filled: bright cells on a dark ground, dark ink on paper), at three levels:
  Otsu's of the box alone; Otsu's of the box and half its side around it (a tight box around a
  round object holds ~20 % background, too little for Otsu to find its level; its surroundings
  add a fair sample of it, and neighbours too); and halfway between the surroundings' level (a
  thin ring outside the box) and the object's (the box's 90th percentile, or 10th for a dark
  object), the half-maximum rule for blobs.

The mask whose box fits best is taken, the model's on a near tie (``MODEL_MARGIN``) and GrabCut
before the thresholds (``GRABCUT_MARGIN``). Measured on unseen images with ground-truth boxes
(bench/RESULTS.md, "Box fill"): nuclei 25.6 -> 19.5 simulated seconds an object, demo 22.0 -> 10.0;
the three threshold levels (one before) took the nuclei's fill without a model from 22.2 to 15.0
(bench/bench_boxfill.py; RESULTS.md, "Three threshold levels for the box fill").
Without a model (the first images of a project) the classical cuts alone fill the box, and so
they do for a model whose masks did not make the fill cheaper on its held-out images (a weak first
model's: ``evaluation.fill_choice``, ``Predictor.model_masks``).

Work is per box on a crop around it, downscaled to at most ``MAX_SIDE`` px, so a box in a
12-megapixel photo costs about what a small one does.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from . import masks as M
from .masks import Rle

MODEL_MARGIN = 0.05  # the model's mask is kept unless another fits the box this much better
GRABCUT_MARGIN = 0.02  # GrabCut before the threshold on a near tie (the threshold knows no colour)
MAX_SIDE = 200  # crops are cut at most this many pixels on a side (then scaled back)
GRABCUT_PAD = 8  # pixels of surroundings around the box (at the crop's scale) for GrabCut's background
GRABCUT_ITERS = 3
WIDE_PAD = 0.5  # the wide threshold's surroundings: this share of the box's longer side around it
RING_PX = 2  # the half level's ring outside the box, in pixels of the (downscaled) crop


@dataclass(frozen=True)
class Cut:
    """A candidate mask inside ``box``'s window: ``crop`` (bool) at (x0, y0) of the image."""

    source: str  # "model", "grabcut" or "threshold"
    crop: np.ndarray
    x0: int
    y0: int

    def rle(self, height: int, width: int) -> Rle:
        return M.encode_crop(self.crop.astype(np.uint8), self.x0, self.y0, height, width)


def _window(box, width: int, height: int, pad: int = 0) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return (max(int(np.floor(x0)) - pad, 0), max(int(np.floor(y0)) - pad, 0),
            min(int(np.ceil(x1)) + pad, width), min(int(np.ceil(y1)) + pad, height))


def box_fit(cut: Cut | None, box) -> float:
    """IoU of the mask's own bounding box with the drawn ``box`` (x0, y0, x1, y1); 0 when empty."""
    if cut is None or not cut.crop.any():
        return 0.0
    ys, xs = np.nonzero(cut.crop)
    a = (cut.x0 + xs.min(), cut.y0 + ys.min(), cut.x0 + xs.max() + 1, cut.y0 + ys.max() + 1)
    iw = max(0.0, min(a[2], box[2]) - max(a[0], box[0]))
    ih = max(0.0, min(a[3], box[3]) - max(a[1], box[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _scaled(crop: np.ndarray) -> tuple[np.ndarray, float]:
    """The crop at most MAX_SIDE on a side, and the factor it was shrunk by."""
    h, w = crop.shape[:2]
    f = min(1.0, MAX_SIDE / max(h, w, 1))
    if f < 1.0:
        crop = cv2.resize(crop, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return crop, f


def _back(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == shape:
        return mask
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def _largest_filled(fg: np.ndarray) -> np.ndarray:
    """The largest 8-connected part of ``fg``, its holes filled."""
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if n <= 1:
        return fg.astype(bool)
    part = lab == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    h, w = part.shape
    outside = np.zeros((h + 2, w + 2), np.uint8)
    outside[1:-1, 1:-1] = part
    cv2.floodFill(outside, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    return part | (outside[1:-1, 1:-1] == 0)


def _object_side(fg: np.ndarray) -> np.ndarray:
    """``fg`` or its inverse: the object is the side most of the box's border is not on."""
    border = np.concatenate([fg[0], fg[-1], fg[:, 0], fg[:, -1]])
    return ~fg if border.mean() > 0.5 else fg


def _gray_around(rgb: np.ndarray, box, pad: int):
    """The gray crop of the box and ``pad`` px around it (downscaled to at most MAX_SIDE a side),
    the box's (x0, y0, x1, y1) at full size and its slice of the crop (None: too small)."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = _window(box, w, h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None, (x0, y0, x1, y1), None
    X0, Y0, X1, Y1 = _window(box, w, h, pad)
    small, g = _scaled(rgb[Y0:Y1, X0:X1])
    gray = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)
    bx0, by0 = int(round((x0 - X0) * g)), int(round((y0 - Y0) * g))
    bx1 = min(gray.shape[1], max(bx0 + 2, int(round((x1 - X0) * g))))
    by1 = min(gray.shape[0], max(by0 + 2, int(round((y1 - Y0) * g))))
    return gray, (x0, y0, x1, y1), (slice(by0, by1), slice(bx0, bx1))


def _level_cut(source: str, inside: np.ndarray, level: float, bright: bool | None, window) -> Cut:
    x0, y0, x1, y1 = window
    fg = inside > level if bright is not False else inside < level
    if bright is None:
        fg = _object_side(fg)
    return Cut(source, _back(_largest_filled(fg), (y1 - y0, x1 - x0)), x0, y0)


def _empty(source: str, window) -> Cut:
    x0, y0, x1, y1 = window
    return Cut(source, np.zeros((max(0, y1 - y0), max(0, x1 - x0)), bool), x0, y0)


def _otsu_cut(source: str, rgb: np.ndarray, box, pad: int) -> Cut:
    """Otsu's level of the box and ``pad`` px around it, applied inside the box; the object is
    the side most of the box's border is not on."""
    gray, window, inside = _gray_around(rgb, box, pad)
    if gray is None:
        return _empty(source, window)
    level, _ = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return _level_cut(source, gray[inside], level, None, window)


def threshold_cut(rgb: np.ndarray, box) -> Cut:
    """Otsu's threshold of the box's gray values; the object is the side the border is not on."""
    return _otsu_cut("threshold", rgb, box, 0)


def wide_threshold_cut(rgb: np.ndarray, box) -> Cut:
    """Otsu's level of the box and its surroundings (``WIDE_PAD``), applied inside the box."""
    x0, y0, x1, y1 = box
    return _otsu_cut("wide threshold", rgb, box, max(2, int(np.ceil(WIDE_PAD * max(x1 - x0, y1 - y0)))))


def half_level_cut(rgb: np.ndarray, box) -> Cut:
    """Halfway between the surroundings' level (the median of a ``RING_PX`` ring outside the box,
    or of the box's own border where the image ends) and the object's (the box's 90th percentile
    if its middle is brighter than that, else its 10th)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)  # the ring is RING_PX wide at the crop's scale
    gray, window, inside = _gray_around(rgb, box, int(np.ceil(RING_PX * max(1.0, (side + 2 * RING_PX) / MAX_SIDE))))
    if gray is None:
        return _empty("half level", window)
    g = gray.astype(np.float32)
    box_g = g[inside]
    ring = np.ones(g.shape, bool)
    ring[inside] = False
    around = g[ring] if ring.sum() >= 8 else np.concatenate([box_g[0], box_g[-1], box_g[:, 0], box_g[:, -1]])
    ground = float(np.median(around))
    bh, bw = box_g.shape
    middle = box_g[bh // 4:bh - bh // 4, bw // 4:bw - bw // 4]
    bright = float(np.median(middle if middle.size else box_g)) >= ground
    level = (ground + float(np.percentile(box_g, 90 if bright else 10))) / 2
    return _level_cut("half level", box_g, level, bright, window)


def grabcut(rgb: np.ndarray, box) -> Cut:
    """OpenCV's GrabCut initialised with the box (outside it: background), on a crop around it."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = _window(box, w, h)
    side = max(x1 - x0, y1 - y0, 1)
    pad = max(GRABCUT_PAD, int(np.ceil(GRABCUT_PAD * side / MAX_SIDE)))
    X0, Y0, X1, Y1 = _window(box, w, h, pad)
    crop, f = _scaled(rgb[Y0:Y1, X0:X1])
    empty = Cut("grabcut", np.zeros((y1 - y0, x1 - x0), bool), x0, y0)
    rx, ry = int(round((x0 - X0) * f)), int(round((y0 - Y0) * f))
    rw, rh = max(1, int(round((x1 - x0) * f))), max(1, int(round((y1 - y0) * f)))
    if rw < 2 or rh < 2 or (rx == 0 and ry == 0 and rw >= crop.shape[1] and rh >= crop.shape[0]):
        return empty  # no surroundings to learn the background from
    label = np.zeros(crop.shape[:2], np.uint8)
    cv2.setRNGSeed(0)  # its colour models start from a random draw: the same box, the same mask
    try:
        cv2.grabCut(np.ascontiguousarray(crop[..., ::-1]), label, (rx, ry, rw, rh), np.zeros((1, 65)),
                    np.zeros((1, 65)), GRABCUT_ITERS, cv2.GC_INIT_WITH_RECT)
    except cv2.error:  # a flat crop: no colour model can be made
        return empty
    fg = _back((label == cv2.GC_FGD) | (label == cv2.GC_PR_FGD), (Y1 - Y0, X1 - X0))
    return Cut("grabcut", fg[y0 - Y0:y1 - Y0, x0 - X0:x1 - X0], x0, y0)


def model_cut(rle: Rle | None) -> Cut | None:
    """The model's mask as a candidate (its window is the mask's own bounding box)."""
    if rle is None:
        return None
    crop, x0, y0 = M.decode_crop(rle)
    return Cut("model", crop.astype(bool), x0, y0)


#: The classical cuts, each with its margin in the fit (GrabCut before the thresholds on a near tie).
CUTS = ((grabcut, GRABCUT_MARGIN), (threshold_cut, 0.0), (wide_threshold_cut, 0.0), (half_level_cut, 0.0))


def _best(cands: list[tuple[Cut | None, float]], box) -> Cut:
    """The candidate whose mask fits ``box`` best with its margin; on an exact tie the first."""
    return max(((c, m) for c, m in cands if c is not None), key=lambda cm: box_fit(cm[0], box) + cm[1])[0]


def best_cut(rgb: np.ndarray, box, model_rle: Rle | None = None, cuts=CUTS) -> Cut:
    """The candidate whose mask fits the drawn ``box`` best (module docstring); on an exact tie
    the first of model, GrabCut, the thresholds (``max`` keeps the first)."""
    return _best([(model_cut(model_rle), MODEL_MARGIN)] + [(cut(rgb, box), margin) for cut, margin in cuts], box)


def fill_box(rgb: np.ndarray, box, model_rle: Rle | None = None) -> tuple[Rle, str]:
    """(the mask to give the person's box, which candidate it came from)."""
    cut = best_cut(rgb, box, model_rle)
    return cut.rle(rgb.shape[0], rgb.shape[1]), cut.source


def fill_box_both(rgb: np.ndarray, box, model_rle: Rle | None) -> tuple[Rle, Rle]:
    """(``fill_box``'s mask with the model's among the candidates, and with the cuts alone), the
    cuts computed once: what ``evaluation.fill_choice`` compares."""
    cuts = [(cut(rgb, box), margin) for cut, margin in CUTS]
    h, w = rgb.shape[:2]
    return _best([(model_cut(model_rle), MODEL_MARGIN)] + cuts, box).rle(h, w), _best(cuts, box).rle(h, w)
