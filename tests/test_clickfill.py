"""The Click tool: one click inside an object grows its mask; touching objects are cut apart; the
simulated annotator prices a click first; and the real window adds the object a click finds."""


import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector import annotator as A
from detector import clickfill as CF
from detector import masks as M
from detector.domain import ImageStatus, Instance
from detector.inference import fill_clicks
from detector.synthetic import make_scene
from test_boxfill import _cells, _iou, opened_on, unlabelled_scene


def _cut_iou(cut, truth: np.ndarray) -> float:
    assert cut is not None
    return _iou(cut.rle(*truth.shape), truth)


def test_a_click_finds_each_shape_of_a_scene():
    ious = []
    for seed in range(6):
        rgb, objects = make_scene(np.random.default_rng(seed), 320, 240)
        for o in objects:
            ious.append(_cut_iou(CF.click_cut(rgb, CF.click_point(o.mask)), o.mask))
    # Shapes overlap one another and differ in colour, not always in brightness.
    assert np.mean(ious) > 0.9 and np.mean(np.array(ious) >= 0.75) > 0.9


def test_touching_cells_are_cut_apart_and_a_window_grows_to_a_large_object():
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w]
    left = (yy - 60) ** 2 + (xx - 60) ** 2 <= 20 ** 2
    right = (yy - 60) ** 2 + (xx - 98) ** 2 <= 20 ** 2  # overlaps ``left``: one blob at any level
    img = np.full((h, w), 10.0)
    img[left | right] = 120
    seam = (np.abs(xx - 79) <= 2) & (left | right)
    img[seam] = 90  # the seam between them is a little darker
    rgb = np.repeat(img[..., None], 3, axis=2).astype(np.uint8)
    got = CF.click_cut(rgb, (55, 60))
    assert _cut_iou(got, left) > 0.85
    assert _cut_iou(CF.click_cut(rgb, (100, 60)), right) > 0.85
    # Without the seam only the neck separates them.
    img[seam] = 120
    rgb = np.repeat(img[..., None], 3, axis=2).astype(np.uint8)
    assert _cut_iou(CF.click_cut(rgb, (55, 60)), left) > 0.85

    big = np.full((400, 500), 200, np.uint8)  # a dark disc much larger than the first window
    disc = (np.mgrid[0:400, 0:500][0] - 200) ** 2 + (np.mgrid[0:400, 0:500][1] - 250) ** 2 <= 150 ** 2
    big[disc] = 40
    assert _cut_iou(CF.click_cut(np.repeat(big[..., None], 3, axis=2), (250, 200)), disc) > 0.95


def test_dim_cells_and_nothing_to_find():
    rgb, masks = _cells(seed=3)
    ious = [_cut_iou(CF.click_cut(rgb, CF.click_point(m)), m) for m in masks]
    assert np.mean(ious) > 0.8
    flat = np.full((60, 80, 3), 90, np.uint8)
    assert CF.click_cut(flat, (40, 30)) is None and CF.fill_click(flat, (40, 30)) is None
    (found,) = fill_clicks(None, rgb, [CF.click_point(masks[0])], [7])
    assert found.category_id == 7 and found.box == pytest.approx(M.bbox_xyxy(found.mask))
    assert fill_clicks(None, flat, [(5, 5)], [7]) == (None,)


def _disc(h=60, w=80, r=12):
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - 30) ** 2 + (xx - 40) ** 2 <= r ** 2


def test_the_annotator_clicks_first_and_boxes_where_the_click_fails():
    truth_mask = _disc()
    rle = M.encode(truth_mask)
    gt = Instance(1, M.bbox_xyxy(rle), rle)
    c = A.COSTS
    right = lambda xy, cid: Instance(cid, gt.box, rle)  # noqa: E731
    wrong_rle = M.encode(_disc(r=30))
    wrong = lambda xy, cid: Instance(cid, M.bbox_xyxy(wrong_rle), wrong_rle)  # noqa: E731
    nothing = lambda xy, cid: None  # noqa: E731
    fill = lambda box, cid: Instance(cid, box, rle)  # noqa: E731  the box fill gets it right
    seen = []
    spy = lambda xy, cid: seen.append(xy) or right(xy, cid)  # noqa: E731

    base = c.look_image
    assert A.review_cost([], [gt], fill).seconds == pytest.approx(base + c.box)
    assert A.review_cost([], [gt], fill, click=spy).seconds == pytest.approx(base + c.click)
    assert seen and truth_mask[int(seen[0][1]), int(seen[0][0])]  # clicked inside the object
    assert A.review_cost([], [gt], fill, click=wrong).seconds == pytest.approx(base + 2 * c.click + c.box)
    assert A.review_cost([], [gt], fill, click=nothing).seconds == pytest.approx(base + c.click + c.box)
    box_only = Instance(1, gt.box)  # no mask to click: a box
    assert A.review_cost([], [box_only], fill, click=right).seconds == pytest.approx(base + c.box)
    seconds, n = A.draw_seconds([([gt], fill, right)])
    assert n == 1 and seconds == pytest.approx(c.click)

    # A prediction the slider hides, under the click: the click shows it (the grown region is
    # not asked for); shown above the slider it is only verified.
    pred = Instance(2, gt.box, rle, score=0.3, source="model", changed_by="model")
    assert A.review_cost([], [gt], fill, click=nothing, predictions=[pred]).seconds == pytest.approx(base + c.click)
    corner = np.zeros(truth_mask.shape, bool)
    corner[0:3, 0:3] = True
    elsewhere = Instance(1, (0, 0, 3, 3), M.encode(corner), score=0.3, source="model", changed_by="model")
    assert A.review_cost([], [gt], fill, click=nothing, predictions=[elsewhere]).seconds == \
        pytest.approx(base + c.click + c.box)
    by = A.slider_costs([([pred], [gt], fill, nothing)], grid=(0.2, 0.5))
    assert by[0.2] == pytest.approx(base + c.verify_instance + c.fix_class)  # shown: checked, class fixed
    assert by[0.5] == pytest.approx(base + c.click)
    assert M.instances_at([pred, elsewhere], (40.5, 30.5)) == [pred]
    assert M.instances_at([pred], (29, 19)) == []  # inside the box, outside the mask


def test_held_out_images_decide_whether_a_click_shows_a_hidden_prediction():
    from detector.evaluation import slider_choice
    from detector.versions import click_shows_hidden

    truth_mask = _disc()
    rle = M.encode(truth_mask)
    gt = Instance(1, M.bbox_xyxy(rle), rle)
    right = lambda xy, cid: Instance(cid, gt.box, rle)  # noqa: E731
    fill = lambda box, cid: Instance(cid, box, rle)  # noqa: E731
    good = Instance(1, gt.box, rle, score=0.3, source="model", changed_by="model")
    blob = M.encode(_disc(r=25))  # a hidden prediction far too big
    bad = Instance(1, M.bbox_xyxy(blob), blob, score=0.3, source="model", changed_by="model")
    corner = np.zeros(truth_mask.shape, bool)
    corner[0:3, 0:3] = True
    false = Instance(1, (0, 0, 3, 3), M.encode(corner), score=0.3, source="model", changed_by="model")
    wrong = lambda xy, cid: None  # noqa: E731  the grown region finds nothing
    # A false positive as sure as the object: shown, it costs a delete; hidden, nothing.
    chose_good = slider_choice([([good, false], [gt], fill, wrong)])
    chose_bad = slider_choice([([bad, false], [gt], fill, right)])
    assert chose_good["click_shows_hidden"] is True and chose_bad["click_shows_hidden"] is False
    assert slider_choice([([good], [gt], fill)])["click_shows_hidden"] is None  # no Click tool priced
    assert click_shows_hidden({"slider": chose_good}) and not click_shows_hidden({"slider": chose_bad})
    assert click_shows_hidden(None) and click_shows_hidden({"slider": {"best": 0.5}})  # never priced


def test_the_click_tool_adds_the_object_in_the_real_window(qtbot, tmp_path, open_window):
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from app.canvas import Tool
    from detector.store import Project

    folder, part, target_name, objects = unlabelled_scene(tmp_path)
    Image.new("RGB", (120, 90), (90, 90, 90)).save(folder / "flat.png")
    with Project(folder) as p:
        w, target = opened_on(qtbot, p, part, target_name, open_window, Tool.CLICK)
        _, truth = max(objects, key=lambda o: o[1].sum())
        canvas = w.canvas
        x, y = CF.click_point(truth)
        QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                         canvas.mapFromScene(x, y))
        qtbot.waitUntil(lambda: len(p.instances(target)) == 1, timeout=60_000)
        (inst,) = p.instances(target)
        assert _iou(inst.mask, truth) > 0.9 and inst.box == pytest.approx(M.bbox_xyxy(inst.mask))
        assert canvas.selected_ids() == [inst.id]
        # The same object clicked again (with nothing selected): it holds one object, so nothing
        # is split or added; it is selected (tests/test_split.py has the split).
        canvas.select_ids([])
        with qtbot.waitSignal(w.editor.message, timeout=60_000) as said:
            QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                             canvas.mapFromScene(x, y))
        assert "One object there" in said.args[0]
        assert p.instances(target) == [inst] and canvas.selected_ids() == [inst.id]
        # A region grown again over the object (a click beside its mask): not added twice.
        canvas.select_ids([])
        with qtbot.waitSignal(w.editor.message, timeout=10_000) as said:
            w.editor.apply_clicks(target, [inst.with_(id=None)])
        assert "Already drawn" in said.args[0]
        assert p.instances(target) == [inst] and canvas.selected_ids() == [inst.id]
        w.editor.stack().undo()  # one step: undo takes the object away
        assert p.instances(target) == []

        # A click on an image with nothing in it: nothing is added, the status bar says what to do.
        flat = next(r.id for r in p.images() if r.path == "flat.png")
        with qtbot.waitSignal(w.image_shown, timeout=10_000):
            w.show_image(flat)
        with qtbot.waitSignal(w.editor.message, timeout=60_000) as said:
            QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                             canvas.mapFromScene(50.5, 40.5))
        assert "draw a box" in said.args[0]
        assert p.instances(flat) == []

        # A prediction the slider hides: a click on it shows it (accepted), as one undo step.
        with qtbot.waitSignal(w.image_shown, timeout=10_000):
            w.show_image(target)
        box, truth = min(objects, key=lambda o: o[1].sum())
        p.set_status(target, ImageStatus.PREDICTED)
        (low,) = p.replace_predictions(target, [Instance(2, box, M.encode(truth), score=0.2)])
        w.refresh_instances()
        w.acts.score_slider.setValue(50)
        assert not canvas.items_by_id[low.id].isVisible()
        x, y = CF.click_point(truth)
        QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                         canvas.mapFromScene(x, y))
        (shown,) = p.instances(target)
        assert shown.id == low.id and shown.accepted and shown.mask == low.mask
        assert shown.category_id == w.editor.current_category
        assert canvas.items_by_id[low.id].isVisible()
        w.editor.stack().undo()
        assert not p.instance(low.id).accepted

        # Where the model's held-out images said its hidden masks cost more, the click grows a
        # region there instead, and the prediction stays hidden.
        w.editor.click_shows_hidden = False
        QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                         canvas.mapFromScene(x, y))
        qtbot.waitUntil(lambda: len(p.instances(target)) == 2, timeout=60_000)
        assert not p.instance(low.id).accepted
        (grown,) = [i for i in p.instances(target) if i.id != low.id]
        assert _iou(grown.mask, truth) > 0.8


def test_clicks_and_boxes_are_answered_while_the_model_thread_is_busy(qtbot, tmp_path, open_window,
                                                                      monkeypatch):
    """The inference thread is busy for minutes at a time: a pre-annotation batch is one call there
    (re-annotating a folder after training), the first model load imports torch. The person's
    clicks and box fills do not wait for it. Here the worker's start is held on that thread."""
    import threading

    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    from app import workers
    from app.canvas import Tool
    from detector.store import Project
    from test_app_editing import drag

    entered, release = threading.Event(), threading.Event()
    ran_on: list[str] = []

    def held(*_a, **_k):  # inside the worker's warm_up slot, on the inference thread
        ran_on.append(threading.current_thread().name)
        entered.set()
        release.wait(120)

    monkeypatch.setattr(workers, "settle_imports", held)
    folder, part, target_name, objects = unlabelled_scene(tmp_path)
    with Project(folder) as p:
        w, target = opened_on(qtbot, p, part, target_name, open_window, Tool.CLICK)
        try:
            qtbot.waitUntil(entered.is_set, timeout=60_000)  # after the worker's torch import
            assert ran_on != [threading.main_thread().name]
            (_, big), (box, small) = sorted(objects, key=lambda o: -o[1].sum())[:2]
            x, y = CF.click_point(big)
            QTest.mouseClick(w.canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                             w.canvas.mapFromScene(x, y))
            qtbot.waitUntil(lambda: len(p.instances(target)) == 1, timeout=30_000)
            w.acts.set_tool(Tool.BOX)
            drag(w.canvas, box[:2], box[2:])
            qtbot.waitUntil(lambda: len(p.instances(target)) == 2
                            and all(i.mask is not None for i in p.instances(target)), timeout=30_000)
            assert not release.is_set()  # both answered while the inference thread was held
            by_size = sorted(p.instances(target), key=lambda i: -M.area(i.mask))
            assert _iou(by_size[0].mask, big) > 0.9 and _iou(by_size[1].mask, small) > 0.8
        finally:
            release.set()


def test_without_a_model_boxes_and_clicks_need_no_torch(tmp_path):
    """Before any model, the fill thread's functions (``detector.fills``) answer from the classical
    cuts and the grown region alone, without importing torch (the inference thread's first import
    takes 7-15 s on a busy laptop): a fresh interpreter fills a box and a click."""
    import subprocess
    import sys

    folder, _, target_name, objects = unlabelled_scene(tmp_path)
    (box, truth), = objects[:1]
    xy = list(CF.click_point(truth))
    code = ("import json, sys\nfrom detector.images import load_image\n"
            "from detector.fills import fill_boxes, fill_clicks\n"
            f"a = load_image({str(folder / target_name)!r})\n"
            f"(b,), (c,) = fill_boxes(None, a, [{list(box)!r}], [2]), fill_clicks(None, a, [{xy!r}], [1])\n"
            "print(json.dumps([b.box, b.mask, b.category_id, c.box, c.mask, c.category_id, 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    b_box, b_mask, b_cat, c_box, c_mask, c_cat, torch_in = json.loads(out.stdout)
    assert not torch_in
    assert (b_cat, c_cat) == (2, 1)
    assert _iou(b_mask, truth) > 0.8 and _iou(c_mask, truth) > 0.8
    assert b_box == pytest.approx(list(box), abs=1e-6) and c_box == pytest.approx(list(M.bbox_xyxy(c_mask)))
