"""A Click tool click inside an instance that ran over touching objects splits it: the cut itself,
the simulated annotator's pricing of it, and the real window (one undo step)."""

import numpy as np
import pytest

from detector import annotator as A
from detector import clickfill as CF
from detector import masks as M
from detector.domain import Instance
from detector.fills import split_click
from detector.inference import truth_click


def _cells(centres, r=20, h=120, w=200, seam=True):
    """(RGB image, [mask per cell], union): bright discs on a dark ground, each touching the next,
    a slightly darker seam where they meet (as between touching nuclei)."""
    yy, xx = np.mgrid[0:h, 0:w]
    radii = r if isinstance(r, (list, tuple)) else [r] * len(centres)
    cells = [(yy - cy) ** 2 + (xx - cx) ** 2 <= rk ** 2 for (cx, cy), rk in zip(centres, radii)]
    img = np.full((h, w), 15.0)
    union = np.zeros((h, w), bool)
    for c in cells:
        img[c] = 130
        union |= c
    if seam:
        for (ax, _), (bx, _) in zip(centres, centres[1:]):
            img[(np.abs(xx - (ax + bx) / 2) <= 2) & union] = 95
    owner = np.full((h, w), -1)
    d = [np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) - rk for (cx, cy), rk in zip(centres, radii)]
    for k in range(len(cells)):  # the truth: each pixel to the cell whose rim is nearest
        owner[union & (np.argmin(d, axis=0) == k)] = k
    truths = [owner == k for k in range(len(cells))]
    return np.repeat(img[..., None], 3, axis=2).astype(np.uint8), truths, union


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_a_click_inside_a_merged_region_cuts_off_the_clicked_object():
    rgb, (left, right), union = _cells([(60, 60), (96, 60)])
    new, rest = CF.split_cut(rgb, union, (100, 60))
    assert _iou(new, right) > 0.85 and _iou(rest, left) > 0.85
    assert not (new & rest).any() and ((new | rest) == union).all()  # nothing lost, nothing twice
    # The same with no darker seam: the colour level is flat, the cut still falls between them.
    rgb, (left, right), union = _cells([(60, 60), (96, 60)], seam=False)
    new, rest = CF.split_cut(rgb, union, (55, 60))
    assert _iou(new, left) > 0.8 and _iou(rest, right) > 0.8
    # A click on the middle one of three: the instance keeps both of the others.
    rgb, (a, b, c), union = _cells([(50, 60), (86, 60), (122, 60)])
    new, rest = CF.split_cut(rgb, union, (86, 60))
    assert _iou(new, b) > 0.8 and _iou(rest, a | c) > 0.85
    # One object only, or a click outside the instance: nothing to split.
    assert CF.split_cut(rgb, a, (50, 60)) is None
    assert CF.split_cut(rgb, union, (5, 5)) is None

    # As instances: the clicked instance keeps the rest (its own id, box fitted), the new one
    # takes the click's category.
    rle = M.encode(union)
    inside = Instance(3, M.bbox_xyxy(rle), rle, id=9, image_id=1)
    kept, made = split_click(None, rgb, inside, (122, 60), 5)
    assert kept.id == 9 and kept.category_id == 3 and made.id is None and made.category_id == 5
    assert _iou(M.decode(made.mask).astype(bool), c) > 0.8
    assert kept.box == pytest.approx(M.bbox_xyxy(kept.mask)) and made.box == pytest.approx(M.bbox_xyxy(made.mask))
    assert split_click(None, rgb, Instance(3, (0, 0, 10, 10)), (5, 5), 5) is None  # a box has no mask


def test_the_annotator_splits_a_region_that_ran_over_its_neighbour():
    rgb, truths, union = _cells([(60, 60), (96, 60)])
    gts = [Instance(1, M.bbox_xyxy(r), r) for r in (M.encode(t) for t in truths)]
    merged = M.encode(union)
    click = truth_click(None, rgb)
    blob = lambda xy, cid: Instance(cid, M.bbox_xyxy(merged), merged)  # noqa: E731  a click runs over both
    blob.split = click.split
    fill = lambda box, cid: Instance(cid, box, gts[0].mask if box == gts[0].box else gts[1].mask)  # noqa: E731
    c = A.COSTS
    with_split = A.review_cost([], gts, fill, click=blob)
    assert with_split.seconds == pytest.approx(c.look_image + 2 * c.click)  # a click each, both parts right
    assert with_split.actions["click object"] == 2
    without = lambda xy, cid: blob(xy, cid)  # noqa: E731  the same tool without the split
    # Undone and boxed, each of the two: click, undo, box.
    undone = c.look_image + 2 * (2 * c.click + c.box)
    assert A.review_cost([], gts, fill, click=without).seconds == pytest.approx(undone)
    # A region over more neighbours than SPLIT_MOST is undone, not split click by click.
    centres = [(30 + 36 * k, 60) for k in range(A.SPLIT_MOST + 2)]
    rgb, truths, union = _cells(centres, w=240)
    gts = [Instance(1, M.bbox_xyxy(r), r) for r in (M.encode(t) for t in truths)]
    merged = M.encode(union)
    blob = lambda xy, cid: Instance(cid, M.bbox_xyxy(merged), merged)  # noqa: E731
    blob.split = truth_click(None, rgb).split
    fill = lambda box, cid: next(g for g in gts if g.box == box)  # noqa: E731
    n = len(gts)
    assert A.review_cost([], gts, fill, click=blob).seconds == pytest.approx(c.look_image + n * (2 * c.click + c.box))


def test_the_annotator_splits_a_shown_prediction_that_holds_a_missed_object():
    rgb, (big, small), union = _cells([(60, 60), (92, 60)], r=[20, 12])
    gts = [Instance(1, M.bbox_xyxy(r), r) for r in (M.encode(t) for t in (big, small))]
    merged = M.encode(union)
    pred = Instance(1, M.bbox_xyxy(merged), merged, score=0.9, source="model", changed_by="model")
    assert A.match([pred], gts)[0][1] == 0  # the prediction is the big cell's
    click = truth_click(None, rgb)
    fill = lambda box, cid: next(g for g in gts if g.box == box)  # noqa: E731
    c = A.COSTS
    # A click on the small cell, inside the prediction: both parts right, nothing else to do.
    split = A.review_cost([pred], gts, fill, click=click, predictions=[pred])
    assert split.seconds == pytest.approx(c.look_image + c.verify_instance + c.click)
    # Without the split the small cell is clicked and grown on its own, one click more.
    plain = lambda xy, cid: click(xy, cid)  # noqa: E731
    assert A.review_cost([pred], gts, fill, click=plain, predictions=[pred]).seconds == \
        pytest.approx(split.seconds + c.click)


def test_a_click_inside_an_instance_splits_it_in_the_real_window(qtbot, open_window, one_instance):
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from app.canvas import Tool

    rgb, (left, right), union = _cells([(60, 60), (96, 60)])
    p, cat, rec, merged = one_instance(rgb, union, "nucleus")
    w = open_window(p)
    w.acts.set_tool(Tool.CLICK)
    w.editor.current_category = cat.id
    canvas = w.canvas

    def click(x, y):
        QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                         canvas.mapFromScene(x, y))

    click(100.5, 60.5)  # inside the right-hand cell, which the instance also holds
    qtbot.waitUntil(lambda: len(p.instances(rec.id)) == 2, timeout=60_000)
    kept = p.instance(merged.id)
    (new,) = [i for i in p.instances(rec.id) if i.id != merged.id]
    assert _iou(M.decode(kept.mask).astype(bool), left) > 0.85
    assert _iou(M.decode(new.mask).astype(bool), right) > 0.85
    assert canvas.selected_ids() == [new.id]
    # One step to undo: the instance as it was, the new one gone.
    w.editor.stack().undo()
    assert [(i.id, i.mask, i.box) for i in p.instances(rec.id)] == [(merged.id, merged.mask, merged.box)]
    w.editor.stack().redo()
    assert len(p.instances(rec.id)) == 2 and p.instance(merged.id).mask == kept.mask

    # A click inside an instance that holds one object: nothing changes, the status bar says so.
    with qtbot.waitSignal(w.editor.message, timeout=60_000) as said:
        click(100.5, 60.5)
    assert "One object there" in said.args[0]
    assert len(p.instances(rec.id)) == 2 and canvas.selected_ids() == [new.id]
