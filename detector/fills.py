"""The Box tool's fills and the Click tool's regions for a person's boxes and clicks: the model's
second stage where a model is loaded and knows the category, the classical cuts
(``detector.boxfill``) and the grown region (``detector.clickfill``) otherwise.

No torch here: the model is reached through the predictor's methods, so before any model the
app's fill thread answers without waiting for torch's first import (``detector.inference``
re-exports these for its callers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .boxfill import fill_box
from . import masks as M
from .clickfill import fill_click, split_cut
from .domain import MODEL, Instance

if TYPE_CHECKING:
    from .inference import Predictor


def model_in_boxes(predictor: Predictor | None, array: np.ndarray, boxes: list, category_ids: list[int]
                   ) -> list[Instance]:
    """One instance per box in order: the model's own mask and keypoints for the categories it
    knows, a plain box for the others and when there is no model."""
    boxes = [tuple(float(v) for v in b) for b in boxes]
    out = [Instance(cid, b, source=MODEL, changed_by=MODEL) for b, cid in zip(boxes, category_ids)]
    label_of = {cid: lab for lab, cid in predictor.category_ids.items()} if predictor else {}
    known = [k for k, c in enumerate(category_ids) if c in label_of]
    if known:
        found = predictor.model_in_boxes(array, [boxes[k] for k in known], [label_of[category_ids[k]] for k in known])
        for k, inst in zip(known, found):
            out[k] = inst
    return out


def fill_boxes(predictor: Predictor | None, array: np.ndarray, boxes: list, category_ids: list[int],
               model_masks: bool | None = None) -> tuple[Instance, ...]:
    """Masks for a person's boxes, one instance per box in order (project category ids): the
    model's second stage (mask, keypoints) for the categories it knows, and the classical cuts of
    ``detector.boxfill`` where they fit the box better; the cuts alone for the other categories,
    when there is no model yet, and where ``model_masks`` (default the predictor's) is off."""
    use = predictor is not None and (predictor.model_masks if model_masks is None else model_masks)
    return tuple(r.with_(mask=fill_box(array, r.box, r.mask if use else None)[0])
                 for r in model_in_boxes(predictor, array, boxes, category_ids))


def fill_clicks(predictor: Predictor | None, array: np.ndarray, points: list, category_ids: list[int]
                ) -> tuple[Instance | None, ...]:
    """The Click tool: per click (x, y) an instance of its category with the region grown from it
    (``detector.clickfill``) and that region's box, or None where nothing stands out there. For a
    category with keypoints the model (where it knows the category) places them in the box."""
    found = [fill_click(array, p) for p in points]
    return _posed(predictor, array, [None if f is None else Instance(cid, f[1], f[0])
                                     for f, cid in zip(found, category_ids)])


def split_click(predictor: Predictor | None, array: np.ndarray, inside: Instance, xy, category_id: int
                ) -> tuple[Instance, Instance] | None:
    """The Click tool on an instance already there (a region that ran over touching objects):
    ``inside`` cut in two at the click (``clickfill.split_cut``), as (``inside`` keeping the rest
    of its mask, with that part's box; a new instance of ``category_id`` with the part around the
    click, keypoints as ``fill_clicks`` places them). None where the instance has no mask, the
    click is not on it, or nothing there is a second object."""
    if inside.mask is None:
        return None
    cut = split_cut(array, M.decode(inside.mask).astype(bool), xy)
    if cut is None:
        return None
    part, rest = (M.encode(m) for m in cut)
    new = _posed(predictor, array, [Instance(category_id, M.bbox_xyxy(part), part)])[0]
    return inside.with_(mask=rest, box=M.bbox_xyxy(rest)), new


def _posed(predictor: Predictor | None, array: np.ndarray, found: list[Instance | None]) -> tuple[Instance | None, ...]:
    """``found`` with keypoints placed by the model in each box, for the categories with keypoints
    that it knows."""
    label_of = {cid: lab for lab, cid in predictor.category_ids.items()} if predictor else {}
    posed = [k for k, f in enumerate(found)
             if f is not None and f.category_id in label_of and label_of[f.category_id] in predictor._slices]
    out = list(found)
    if posed:
        raw = model_in_boxes(predictor, array, [found[k].box for k in posed], [found[k].category_id for k in posed])
        for k, r in zip(posed, raw):
            out[k] = out[k].with_(keypoints=r.keypoints)
    return tuple(out)
