"""A simulated annotator: what a person does in Loupe to turn what it shows into the truth, and
how many seconds that costs.

Given an image's ground truth and the predictions Loupe shows (those above the confidence
slider), ``review_cost`` lists the corrections made with Loupe's own tools and prices them from
published timings. ``manual_cost`` prices labeling the same image from scratch, the baseline.

The cost table (``Costs``) is the one place the seconds live. Sources:
- a COCO instance polygon: 79 s (22 worker-hours per 1,000 segmentations; Lin et al. 2014,
  "Microsoft COCO", sec. 4);
- a box by extreme clicking: 7 s, i.e. 1.75 s a click (Papadopoulos et al. 2017, "Extreme
  clicking for efficient object annotation"; drawing with verification: 34.5 s). Loupe's box is
  one drag with no separate verification step, closer to the 7 s;
- checking a box is right: 1.6 s (Papadopoulos et al. 2016, "We don't need no bounding-boxes");
- correcting a mostly right mask with an assisting tool: 14 s (Segment Anything, Kirillov et al.
  2023, sec. 4: 34 s -> 14 s per mask with model assistance); used for a brush touch-up;
- single clicks and key presses (delete, pick a class, place or drag a keypoint, undo, a click
  with the Click tool, a press of Grow or Shrink mask): one click each, 1.75 s, from the
  extreme-clicking figure.

A mask that is not right (a prediction's, a box's fill, a click's region) is first grown or shrunk
a pixel a press where up to ``GROW_MOST`` presses make it right (at nucleus size an outline one
pixel off is IoU ~0.7), else touched up with the brush, else redrawn (``_mend``).

With the Click tool (``click``: ``detector.clickfill``) a missed object is clicked at its deepest
point first. Where the model has a prediction there that the slider hides, the click shows it
(the highest-scored one whose mask holds the point); else the region grown from the click is
added. A result that is right is kept, a close one touched up or undone, a wrong one undone, and
then the object is drawn as a box (``_draw``). A person sees the result at once, so a failed
click costs the click and the undo. A region that ran over other missed objects (it holds at
least half of each, ``SPLIT_MOST`` objects at most) is split instead: each of those objects is
clicked inside the region (the Click tool's ``split``, ``detector.clickfill.split_cut``), and
every part is then kept, touched up, or deleted and the object boxed or clicked again. So is a
shown prediction that holds a missed object's click point, as the app does: the click splits it,
and the prediction's match is priced on what is left of it.

Matching (stated thresholds): a prediction is the same object as a ground-truth instance at IoU
>= ``MATCH_IOU`` (0.5, COCO's loosest AP threshold); its mask (box, for box-only data) is
accepted as is at IoU >= ``GOOD_IOU`` (0.75, COCO's strict one: at nucleus size, about a
pixel of boundary). IoU is mask IoU where both have masks, else box IoU. A keypoint is right
within ``KEYPOINT_TOL`` of the object's size (sqrt of the box area), at least 2 px.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import masks as M
from .clickfill import click_point
from .domain import Instance

MATCH_IOU = 0.5
GOOD_IOU = 0.75
KEYPOINT_TOL = 0.05


@dataclass(frozen=True)
class Costs:
    """Seconds per action (sources in the module docstring)."""

    look_image: float = 3.0  # open, look over, press Space: one glance plus a key
    verify_instance: float = 1.6  # Papadopoulos et al. 2016
    click: float = 1.75  # Papadopoulos et al. 2017: 7 s / 4 clicks
    box: float = 7.0  # Papadopoulos et al. 2017
    touch_up: float = 14.0  # Kirillov et al. 2023, assisted mask
    polygon: float = 79.0  # Lin et al. 2014

    @property
    def delete(self) -> float:  # select + Delete
        return self.click

    @property
    def fix_class(self) -> float:  # select + pick from the list
        return 2 * self.click

    @property
    def adjust_box(self) -> float:  # drag two corners
        return 2 * self.click


COSTS = Costs()

#: ``fill(box, category_id) -> Instance | None``: the model's mask (and keypoints) for a box a
#: person drew, as Loupe's box-prompted fill gives it; None where the model cannot fill.
Fill = Callable[[tuple[float, float, float, float], int], "Instance | None"]

#: ``click((x, y), category_id) -> Instance | None``: what the Click tool makes of a click at
#: (x, y) (mask, box, keypoints); None where it finds nothing. Its optional attribute
#: ``split(instance, (x, y), category_id) -> (instance's rest, new instance) | None`` is the same
#: tool's click inside an instance (``detector.fills.split_click``).
Click = Callable[[tuple[float, float], int], "Instance | None"]

SPLIT_MOST = 3  # a region over more missed objects than this is undone, not split click by click
GROW_MOST = 3  # presses of Grow / Shrink mask a person tries before touching a mask up with the brush


@dataclass
class ImageCost:
    seconds: float = 0.0
    actions: Counter = field(default_factory=Counter)

    def add(self, action: str, seconds: float, n: int = 1) -> None:
        if n:
            self.actions[action] += n
            self.seconds += seconds * n


def match(preds: Sequence[Instance], gts: Sequence[Instance]) -> list[tuple[int, int, float]]:
    """Greedy by score: each prediction takes the free ground-truth instance it overlaps most,
    at IoU >= MATCH_IOU (any class: a wrong class is fixed, not redrawn)."""
    ious = M.iou_matrix(preds, gts)
    order = sorted(range(len(preds)), key=lambda k: -(preds[k].score if preds[k].score is not None else 1.0))
    taken: set[int] = set()
    pairs = []
    for k in order:
        if not len(gts):
            break
        row = ious[k].copy()
        row[list(taken)] = -1
        j = int(row.argmax())
        if row[j] >= MATCH_IOU:
            taken.add(j)
            pairs.append((k, j, float(row[j])))
    return pairs


def _keypoint_cost(pred_kps, gt: Instance, cost: ImageCost, costs: Costs) -> None:
    """Drag each wrong keypoint, place each missing one, hide each that should not be there."""
    if not gt.keypoints:
        return
    x1, y1, x2, y2 = gt.box
    tol = max(2.0, KEYPOINT_TOL * float(np.sqrt(max(1.0, (x2 - x1) * (y2 - y1)))))
    for k, (gx, gy, gv) in enumerate(gt.keypoints):
        p = pred_kps[k] if k < len(pred_kps) else (0.0, 0.0, 0)
        shown = p[2] > 0
        if gv > 0 and not shown:
            cost.add("place keypoint", costs.click)
        elif gv > 0 and np.hypot(p[0] - gx, p[1] - gy) > tol:
            cost.add("drag keypoint", costs.click)
        elif gv == 0 and shown:
            cost.add("hide keypoint", costs.click)


def _draw(gt: Instance, fill: Fill | None, costs: Costs, click: Click | None = None,
          under: Instance | None = None, xy: tuple[float, float] | None = None) -> ImageCost:
    """A missed object, or one redrawn: a box, the model fills it (mask and keypoints); what the
    fill still gets wrong is touched up (IoU >= MATCH_IOU) or traced by hand. With ``click``, a
    click first (``_click_first``, at ``xy`` when the caller has it), which shows ``under`` (a
    hidden prediction at the click) where there is one."""
    if click is not None and gt.mask is not None:
        return _click_first(gt, fill, costs, click, under, xy)
    cost = ImageCost()
    cost.add("draw box", costs.box)
    filled = fill(gt.box, gt.category_id) if fill is not None else None
    if gt.mask is not None:
        mend = _mend(filled, gt, costs)
        if mend is None:
            cost.add("trace polygon", costs.polygon)
        else:
            _merge(cost, mend)
    _keypoint_cost(filled.keypoints if filled is not None else (), gt, cost, costs)
    return cost


def _click_first(gt: Instance, fill: Fill | None, costs: Costs, click: Click,
                 under: Instance | None = None, xy: tuple[float, float] | None = None) -> ImageCost:
    """A click at the object's deepest point: the hidden prediction ``under`` it shown, else the
    region grown from it; kept (IoU >= GOOD_IOU), touched up or undone and boxed, whichever is
    cheaper (>= MATCH_IOU), else undone (when it made anything) and the object drawn as a box
    (``_draw``)."""
    cost = ImageCost()
    cost.add("click object", costs.click)
    if under is not None:
        kps = under.keypoints if under.category_id == gt.category_id else ()
        made = under.with_(category_id=gt.category_id, keypoints=kps)
    else:
        made = click(xy or click_point(M.decode(gt.mask).astype(bool)), gt.category_id)
    _merge(cost, _result_cost(made, gt, fill, costs, remove="undo"))
    return cost


def _merge(into: ImageCost, other: ImageCost) -> None:
    into.seconds += other.seconds
    into.actions.update(other.actions)


def review_cost(shown: Sequence[Instance], truth: Sequence[Instance], fill: Fill | None = None,
                costs: Costs = COSTS, click: Click | None = None, drawn: dict | None = None,
                predictions: Sequence[Instance] = ()) -> ImageCost:
    """Seconds to correct ``shown`` (the predictions above the slider) into ``truth``.

    Per image a look and Space, and a glance at each shown instance. A matched prediction: fix
    its class if wrong; a mask below GOOD_IOU is touched up with the brush, or redrawn as a box
    the model fills where that is cheaper; a box-only instance gets its corners dragged;
    keypoints are dragged, placed or hidden. Every prediction matching nothing is deleted; every
    missed instance is drawn as a box and filled (``_draw``), or clicked first with ``click``.
    ``predictions``: every prediction on the image, for the click to show one the slider hides.
    ``drawn`` keeps each truth object's ``_draw`` between calls on the same image (``slider_costs``
    prices ~20 slider values).
    """
    memo = drawn if drawn is not None else {}
    shown_ids = {id(p) for p in shown}

    def at(j: int) -> tuple[tuple[float, float], Instance | None]:
        """Where object ``j`` is clicked, and the hidden prediction that click shows (or None)."""
        if ("at", j) not in memo:  # where the click goes, and what is under it: once an object
            xy = click_point(M.decode(truth[j].mask).astype(bool))
            memo[("at", j)] = xy, M.instances_at(predictions, xy)
        xy, candidates = memo[("at", j)]
        return xy, next((p for p in candidates if id(p) not in shown_ids), None)

    def draw(j: int) -> ImageCost:
        g, under, xy = truth[j], None, None
        if click is not None and g.mask is not None:
            xy, under = at(j)
        key = (j, id(under))
        if key not in memo:
            memo[key] = _draw(g, fill, costs, click, under, xy)
        return memo[key]

    cost = ImageCost()
    cost.add("look", costs.look_image)
    cost.add("verify", costs.verify_instance, len(shown))
    pairs = match(shown, truth)
    matched = {j for _, j, _ in pairs}
    missed = [j for j in range(len(truth)) if j not in matched]
    split = getattr(click, "split", None)
    # A missed object whose click lands inside a shown prediction (one that ran over it): the
    # Click tool splits that prediction there; what is left of it is what its match is priced on.
    now = list(shown)
    cut_off: dict[int, Instance | None] = {}
    for j in missed if split is not None else ():
        if truth[j].mask is None or at(j)[1] is not None:
            continue
        xy = at(j)[0]
        inside = [k for k, p in enumerate(now) if p.mask is not None and M.instances_at([p], xy)]
        if inside:
            k = min(inside, key=lambda k: M.area(now[k].mask))
            res = split(now[k], xy, truth[j].category_id)
            cut_off[j] = None
            if res is not None:
                now[k], cut_off[j] = res
    for k, j, q in pairs:
        p, g = now[k], truth[j]
        if p is not shown[k]:
            q = M.iou(p, g)
        if p.category_id != g.category_id:
            cost.add("fix class", costs.fix_class)
        if q >= GOOD_IOU:
            _keypoint_cost(p.keypoints, g, cost, costs)
        elif g.mask is None:
            cost.add("adjust box", costs.adjust_box)
            _keypoint_cost(p.keypoints, g, cost, costs)
        else:
            if p is shown[k]:  # the same prediction at every slider value (slider_costs): once
                if ("mend", id(p), j) not in memo:
                    memo[("mend", id(p), j)] = _mend(p, g, costs)
                mended = memo[("mend", id(p), j)]
            else:
                mended = _mend(p, g, costs)
            fix = ImageCost()
            if mended is None:  # a split's rest that no longer matches: brushed back all the same
                fix.add("touch up mask", costs.touch_up)
            else:
                _merge(fix, mended)
            _keypoint_cost(p.keypoints, g, fix, costs)
            if fill is not None:
                fix = min(fix, draw(j), key=lambda c: c.seconds)
            _merge(cost, fix)
    cost.add("delete", costs.delete, len(shown) - len(pairs))
    done: set[int] = set()
    for j, part in cut_off.items():
        cost.add("click object", costs.click)
        _merge(cost, _result_cost(part, truth[j], fill, costs, draw(j) if part is not None else None))
        done.add(j)
    for j in missed:
        if j in done:
            continue
        done.add(j)
        group = _split_group(j, missed, done, truth, click, memo, at) if split else []
        if not group:
            _merge(cost, draw(j))
            continue
        key = ("split", j, tuple(group))
        if key not in memo:
            memo[key] = _split_first(truth, [j, *group], memo[("made", j)], fill, costs, split,
                                     [at(k)[0] for k in [j, *group]], draw)
        _merge(cost, memo[key])
        done.update(group)
    return cost


def _split_group(j: int, missed: list[int], done: set[int], truth: Sequence[Instance], click: Click,
                 memo: dict, at) -> list[int]:
    """The other missed objects that object ``j``'s click region ran over (at least half of each;
    none with a hidden prediction at its own click, which that click would show), where the region
    is not right and runs over no more than ``SPLIT_MOST`` objects in all; [] otherwise.
    ``at(k)``: where object ``k`` is clicked and the hidden prediction there (``review_cost``)."""
    g = truth[j]
    if g.mask is None:
        return []
    xy, under = at(j)
    if under is not None:
        return []  # that click shows a hidden prediction
    if ("made", j) not in memo:
        memo[("made", j)] = click(xy, g.category_id)
    made = memo[("made", j)]
    if made is None or made.mask is None or M.iou(made, g) >= GOOD_IOU:
        return []
    if ("over", j) not in memo:  # the objects the region holds half of, whoever else is missed
        region = M.decode(made.mask).astype(bool)
        x1, y1, x2, y2 = made.box
        over = []
        for k, other in enumerate(truth):
            b = other.box
            if k == j or other.mask is None or b[0] > x2 or b[2] < x1 or b[1] > y2 or b[3] < y1:
                continue
            mask = M.decode(other.mask).astype(bool)
            if (region & mask).sum() >= 0.5 * mask.sum():
                over.append(k)
        memo[("over", j)] = over
    if len(memo[("over", j)]) > SPLIT_MOST:
        return []
    left = set(missed) - done
    return [k for k in memo[("over", j)] if k in left and at(k)[1] is None]


def _split_first(truth: Sequence[Instance], group: list[int], made: Instance, fill: Fill | None,
                 costs: Costs, split, xys: list, draw: Callable[[int], ImageCost]) -> ImageCost:
    """Object ``group[0]``'s click region ran over the others: each of them clicked inside it
    (split off the part holding the click), then each part kept, touched up, or deleted and the
    object boxed, as ``_click_first`` prices a click's region; or, the cheaper, the part deleted
    and the object clicked again (``draw(k)``: its own click first, the region ``group[0]``'s
    click grew, for that object)."""
    cost = ImageCost()
    cost.add("click object", costs.click, len(group))
    parts: dict[int, Instance | None] = {group[0]: made}
    for k, xy in zip(group[1:], xys[1:]):
        holder = next((o for o, p in parts.items() if p is not None and M.instances_at([p], xy)), None)
        res = split(parts[holder], xy, truth[k].category_id) if holder is not None else None
        parts[k] = None
        if res is not None:
            parts[holder], parts[k] = res
    for o, part in parts.items():
        _merge(cost, _result_cost(part, truth[o], fill, costs, draw(o) if truth[o].mask is not None else None))
    return cost


def _result_cost(made: Instance | None, g: Instance, fill: Fill | None, costs: Costs,
                 again: ImageCost | None = None, remove: str = "delete") -> ImageCost:
    """What a click made for object ``g`` (a grown region, a shown prediction, a split-off part;
    None: nothing) costs on top of the click: nothing where it is right (IoU >= GOOD_IOU; its
    keypoints fixed), else the cheapest of a touch-up (IoU >= MATCH_IOU), taking it away
    (``remove``: "undo" or "delete") and drawing the object as a box (``_draw``), or taking it away
    and clicking the object again (``again``: that click's own cost)."""
    cost = ImageCost()
    q = M.iou(made, g) if made is not None and made.mask is not None else 0.0
    if q >= GOOD_IOU:
        _keypoint_cost(made.keypoints, g, cost, costs)
        return cost
    redo, retry = ImageCost(), ImageCost()
    if made is not None:
        redo.add(remove, costs.click)
        retry.add(remove, costs.click)
    _merge(redo, _draw(g, fill, costs))
    if again is not None:
        _merge(retry, again)
        redo = min(redo, retry, key=lambda c: c.seconds)
    mend = _mend(made, g, costs) if made is not None else None
    if mend is not None:
        _keypoint_cost(made.keypoints, g, mend, costs)
        redo = min(mend, redo, key=lambda c: c.seconds)
    return redo


def _mend(made: Instance | None, g: Instance, costs: Costs) -> ImageCost | None:
    """The cheapest way to bring ``made``'s mask to ``g``'s without redrawing it: nothing where it
    is right (IoU >= GOOD_IOU); else up to ``GROW_MOST`` presses of Edit > Grow or Shrink mask
    (the outline moved a pixel a press, ``masks.grow``; a click each) where they make it right,
    or a brush touch-up of the mask at IoU >= MATCH_IOU (after presses that get it there);
    None where neither works (the object is redrawn)."""
    if made is None or made.mask is None:
        return None
    cost = ImageCost()
    q = M.iou(made, g)
    if q >= GOOD_IOU:
        return cost
    options = [(costs.touch_up, 0, True)] if q >= MATCH_IOU else []  # (seconds, presses, touch-up)
    for steps in (s for k in range(1, GROW_MOST + 1) for s in (k, -k)):
        rle = M.grow(made.mask, steps)
        q = M.iou(Instance(g.category_id, made.box, rle), g) if rle is not None else 0.0
        presses = abs(steps) * costs.click
        if q >= GOOD_IOU:
            options.append((presses, steps, False))
        elif q >= MATCH_IOU:
            options.append((presses + costs.touch_up, steps, True))
    if not options:
        return None
    _, steps, touch = min(options, key=lambda o: (o[0], abs(o[1])))
    cost.add("grow or shrink mask", costs.click, abs(steps))
    if touch:
        cost.add("touch up mask", costs.touch_up)
    return cost


def draw_seconds(items: Sequence[tuple], costs: Costs = COSTS) -> tuple[float, int]:
    """(mean seconds an object, objects) to draw every object of each item's truth as a box and
    correct its fill (``_draw``). ``items``: (truth, fill) per image, or (truth, fill, click) to
    click each object first."""
    seconds = [_draw(g, it[1], costs, it[2] if len(it) > 2 else None).seconds for it in items for g in it[0]]
    return (sum(seconds) / len(seconds) if seconds else 0.0), len(seconds)


def manual_cost(truth: Sequence[Instance], costs: Costs = COSTS) -> ImageCost:
    """Labeling from scratch: a polygon per object with a mask, a box per box-only object, a
    click per visible keypoint, and the same look per image."""
    cost = ImageCost()
    cost.add("look", costs.look_image)
    for g in truth:
        if g.mask is not None:
            cost.add("trace polygon", costs.polygon)
        else:
            cost.add("draw box", costs.box)
        cost.add("place keypoint", costs.click, sum(1 for _, _, v in g.keypoints if v > 0))
    return cost


def shown_at(predictions: Sequence[Instance], min_score: float) -> list[Instance]:
    """What the person sees: predictions at or above the confidence slider."""
    return [p for p in predictions if p.score is None or p.score >= min_score]


#: Slider values the held-out images are priced at: 0.10 ... 1.00 (1.00 shows nothing a model
#: scored below certainty: the person draws every object, the box fill doing the masks).
SLIDER_GRID = tuple(round(0.05 * k, 2) for k in range(2, 21))


def slider_costs(items: Sequence[tuple], grid: Sequence[float] = SLIDER_GRID, costs: Costs = COSTS,
                 show_hidden: bool = True) -> dict[float, float]:
    """Mean seconds an image to correct each item's predictions into its truth, at each slider
    value. ``items``: (predictions, truth, fill) per image, or (predictions, truth, fill, click);
    ``show_hidden``: a click shows a prediction the slider hides (else it grows a region)."""
    if not items:
        return {}
    drawn: list[dict] = [{} for _ in items]
    return {s: sum(review_cost(shown_at(it[0], s), it[1], it[2], costs, it[3] if len(it) > 3 else None, d,
                               it[0] if show_hidden else ()).seconds
                   for it, d in zip(items, drawn)) / len(items) for s in grid}


def best_slider(by_slider: dict[float, float], default: float = 0.5) -> float:
    """The slider value with the fewest seconds; on a tie the one nearest ``default``."""
    if not by_slider:
        return default
    return min(by_slider, key=lambda s: (round(by_slider[s], 6), abs(s - default)))
