"""Grow / Shrink mask: a mask's outline moved a pixel a press (``masks.grow``), what the simulated
annotator prices it at, and the real window's keys, undo and store."""

import numpy as np
import pytest

from detector import annotator as A
from detector import masks as M
from detector.domain import Instance


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_grow_moves_the_outline_a_pixel_a_step_and_shrink_takes_it_back():
    m = _rect(40, 50, 10, 20, 12, 30)  # 10 x 18
    grown = M.decode(M.grow(M.encode(m), 1)).astype(bool)
    assert grown.sum() == m.sum() + 2 * (10 + 18)  # one pixel out on each side, corners not
    assert grown[9, 12] and grown[20, 29] and grown[15, 11] and not grown[9, 11]
    assert (M.decode(M.grow(M.encode(grown), -1)).astype(bool) == m).all()
    assert M.decode(M.grow(M.encode(m), -2)).astype(bool).sum() == 6 * 14
    assert M.decode(M.grow(M.encode(m), 3)).astype(bool).sum() > grown.sum()
    assert M.grow(M.encode(m), -5) is None  # nothing left
    assert M.grow(M.encode(m), 0) == M.encode(m)


def test_grow_stops_at_the_image_edge_and_shrink_leaves_the_edge_side():
    m = _rect(30, 40, 0, 8, 0, 10)  # in the top-left corner: the object goes on past the image
    shrunk = M.decode(M.grow(M.encode(m), -1)).astype(bool)
    assert shrunk.sum() == 7 * 9 and shrunk[0, 0]  # only the bottom and right sides move in
    grown = M.grow(M.encode(m), 2)
    assert grown["size"] == [30, 40]
    g = M.decode(grown).astype(bool)
    assert g[0, 11] and g[9, 0] and not g[10, 0]


def test_the_annotator_presses_grow_where_a_mask_is_a_pixel_off(monkeypatch):
    c = A.COSTS
    truth = _rect(60, 60, 20, 30, 20, 30)  # 10 x 10: a nucleus-sized object
    gt = Instance(1, M.bbox_xyxy(M.encode(truth)), M.encode(truth))
    tight = M.encode(_rect(60, 60, 21, 29, 21, 29))  # a pixel inside all round: IoU 0.64
    loose = M.encode(_rect(60, 60, 18, 32, 18, 32))  # two pixels outside: IoU 0.51
    assert 0.5 <= M.iou(Instance(1, gt.box, tight), gt) < 0.75

    def fill(box, cid):
        return Instance(cid, box, tight)
    look = c.look_image
    # A missed object drawn as a box whose fill is a pixel tight: one press, not a touch-up.
    assert A.review_cost([], [gt], fill).seconds == pytest.approx(look + c.box + c.click)
    # A shown prediction two pixels too large: two presses of Shrink.
    pred = Instance(1, M.bbox_xyxy(loose), loose, score=0.9)
    cost = A.review_cost([pred], [gt], fill)
    assert cost.seconds == pytest.approx(look + c.verify_instance + 2 * c.click)
    assert cost.actions["grow or shrink mask"] == 2 and not cost.actions["touch up mask"]
    # Without the presses both are touched up with the brush, as before.
    monkeypatch.setattr(A, "GROW_MOST", 0)
    assert A.review_cost([], [gt], fill).seconds == pytest.approx(look + c.box + c.touch_up)
    assert A.review_cost([pred], [gt], fill).seconds == pytest.approx(look + c.verify_instance + c.touch_up)


def test_the_annotator_does_not_press_where_presses_do_not_make_the_mask_right():
    c = A.COSTS
    truth = _rect(60, 60, 20, 40, 20, 40)
    gt = Instance(1, M.bbox_xyxy(M.encode(truth)), M.encode(truth))
    half = M.encode(_rect(60, 60, 20, 40, 20, 33))  # a third cut off: IoU 0.65, no outline shift mends it
    pred = Instance(1, M.bbox_xyxy(half), half, score=0.9)
    cost = A.review_cost([pred], [gt])
    assert cost.actions["touch up mask"] == 1 and not cost.actions["grow or shrink mask"]
    assert cost.seconds == pytest.approx(c.look_image + c.verify_instance + c.touch_up)


def test_grow_and_shrink_in_the_real_window(qtbot, open_window, one_instance):
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    blob = _rect(80, 100, 30, 40, 40, 52)
    p, _, rec, inst = one_instance(np.full((80, 100, 3), 90, np.uint8), blob, "cell")
    rle = inst.mask
    w = open_window(p)
    shortcuts = {a.text(): [k.toString() for k in a.shortcuts()] for a in (w.acts.grow, w.acts.shrink)}
    assert shortcuts == {"Grow mask": ["=", "+"], "Shrink mask": ["-"]}
    # Nothing selected: the status bar says what to do, nothing changes.
    with qtbot.waitSignal(w.editor.message, timeout=5_000) as said:
        w.acts.grow.trigger()
    assert "Select an instance" in said.args[0] and p.instance(inst.id).mask == rle
    w.canvas.select_ids([inst.id])
    w.show()
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow, timeout=5_000)
    w.canvas.setFocus()
    QTest.keyClick(w.canvas, Qt.Key.Key_Equal)  # the shortcut, as a person presses it
    once = M.decode(p.instance(inst.id).mask).astype(bool)
    assert once.sum() == blob.sum() + 2 * (10 + 12)  # in the store as it happens
    w.acts.grow.trigger()
    twice = p.instance(inst.id)
    assert M.decode(twice.mask).astype(bool).sum() > once.sum()
    assert twice.box == pytest.approx((38.0, 28.0, 54.0, 42.0))
    # Repeated presses are one undo step.
    stack = w.editor.stack()
    stack.undo()
    assert p.instance(inst.id).mask == rle and p.instance(inst.id).box == inst.box
    stack.redo()
    assert p.instance(inst.id).mask == twice.mask
    # Shrinking past the mask leaves it as it is and says so.
    for _ in range(2):
        w.acts.shrink.trigger()
    assert p.instance(inst.id).mask == rle
    for _ in range(5):
        w.acts.shrink.trigger()
    left = p.instance(inst.id)
    assert left.mask is not None and M.area(left.mask) == 2 * 4  # 10 x 12 after four; the fifth kept it
    with qtbot.waitSignal(w.editor.message, timeout=5_000) as said:
        w.acts.shrink.trigger()
    assert "leave nothing" in said.args[0] and p.instance(inst.id).mask == left.mask


def test_a_press_moves_the_outline_a_screen_pixel_when_zoomed_out(qtbot, open_window, one_instance):
    """On an image seen at a quarter of its size a press moves the outline 4 image pixels (one
    screen pixel); back at full size, one again."""
    blob = _rect(200, 240, 80, 120, 100, 140)
    p, _, rec, inst = one_instance(np.full((200, 240, 3), 90, np.uint8), blob, "cell")
    w = open_window(p)
    w.canvas.select_ids([inst.id])
    w.canvas.actual_size()
    w.canvas.scale(0.25, 0.25)
    assert w.canvas.image_px_per_screen_px() == 4
    w.acts.grow.trigger()
    assert p.instance(inst.id).box == pytest.approx((96.0, 76.0, 144.0, 124.0))
    w.canvas.actual_size()
    w.acts.shrink.trigger()
    assert p.instance(inst.id).box == pytest.approx((97.0, 77.0, 143.0, 123.0))
    # Zoomed out again, a press past what is left says the step and how to make it finer.
    w.canvas.scale(0.25, 0.25)
    for _ in range(5):  # 46 -> 6 px a side, 4 px a side a press
        w.acts.shrink.trigger()
    left = p.instance(inst.id)
    assert left.box == pytest.approx((117.0, 97.0, 123.0, 103.0))
    with qtbot.waitSignal(w.editor.message, timeout=5_000) as said:
        w.acts.shrink.trigger()
    assert "4 image pixels" in said.args[0] and "zoom in" in said.args[0]
    assert p.instance(inst.id).mask == left.mask
