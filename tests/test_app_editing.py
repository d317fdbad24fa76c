"""Drive the real widgets offscreen: predictions from a small model, then correct everything
with the mouse and keys, undo and redo each edit, and find it all again after reopening."""

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt, QThread, QTimer
from PySide6.QtTest import QTest

from app.canvas import Tool
from app.main_window import MainWindow
from detector import masks as M
from detector.coco import import_coco
from detector.domain import MODEL, ImageStatus
from detector.store import Project


def _pt(canvas, x, y) -> QPoint:
    return canvas.mapFromScene(QPointF(x, y))


def drag(canvas, frm, to, steps=4):
    vp = canvas.viewport()
    QTest.mousePress(vp, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, _pt(canvas, *frm))
    for i in range(1, steps + 1):
        x = frm[0] + (to[0] - frm[0]) * i / steps
        y = frm[1] + (to[1] - frm[1]) * i / steps
        QTest.mouseMove(vp, _pt(canvas, x, y))
    QTest.mouseRelease(vp, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, _pt(canvas, *to))


@pytest.fixture
def setup(qtbot, trained_model, tmp_path):
    """A folder: 3 reviewed images (ground truth) and 3 new ones, with the small model active."""
    from detector.synthetic import generate

    _, _, ckpt, _, _ = trained_model
    folder = tmp_path / "f"
    gt = generate(folder, n_images=6, seed=5, size=(128, 96))  # same scenes the model saw first
    import json

    data = json.loads(gt.read_text())
    keep = {1, 2, 3}
    data["images"] = [i for i in data["images"] if i["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    part = tmp_path / "part.json"
    part.write_text(json.dumps(data))
    p = Project(folder)
    p.scan()
    import_coco(p, part)
    p.add_model("small", str(ckpt), {}, {}, 4, activate=True)
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    with qtbot.waitSignal(w.image_shown, timeout=10_000):
        w.set_project(p)
    qtbot.waitUntil(lambda: w.model_side.info is not None, timeout=30_000)
    yield w, p, folder
    w.close()


def _show(qtbot, w, image_id):
    with qtbot.waitSignal(w.image_shown, timeout=10_000):
        w.show_image(image_id)


def test_correct_everything_with_undo_redo_and_reopen(qtbot, setup):
    w, p, folder = setup
    canvas = w.canvas
    reviewed = p.images(ImageStatus.REVIEWED)
    new = p.images(ImageStatus.NEW)
    assert len(reviewed) == 3 and len(new) == 3

    # Predictions: opening a new image asks the model first; they land in the store and on screen.
    with qtbot.waitSignal(w.predictions_shown, timeout=30_000):
        w.show_image(new[0].id)
    preds = p.instances(new[0].id)
    assert preds and all(i.changed_by == MODEL for i in preds)
    assert p.image(new[0].id).status is ImageStatus.PREDICTED
    assert len(canvas.items_by_id) == len(preds)
    # The slider filters instantly, without the model.
    panel = w.instances_panel
    rows = lambda: [panel.item(i) for i in range(panel.count())]  # noqa: E731
    w.acts.score_slider.setValue(100)
    assert not any(it.isVisible() for it in canvas.items_by_id.values())
    assert len(rows()) == len(preds) and all(r.isHidden() for r in rows())  # the dock's rows go too
    assert panel.parentWidget().windowTitle() == f"Instances ({len(preds)} under the slider)"
    mid = sorted(i.score for i in preds)[len(preds) // 2]
    w.acts.score_slider.setValue(int(mid * 100) + 1)
    shown = {r.data(Qt.ItemDataRole.UserRole) for r in rows() if not r.isHidden()}
    assert shown == {i.id for i in preds if i.score >= (int(mid * 100) + 1) / 100}
    assert shown == {k for k, it in canvas.items_by_id.items() if it.isVisible()}
    w.acts.score_slider.setValue(0)
    assert all(it.isVisible() for it in canvas.items_by_id.values())
    assert not any(r.isHidden() for r in rows()) and panel.parentWidget().windowTitle() == "Instances"
    w.acts.score_slider.setValue(100)
    w.refresh_instances()  # the rows built again (an edit, a new prediction) keep the slider's count
    assert panel.parentWidget().windowTitle() == f"Instances ({len(preds)} under the slider)"
    w.acts.score_slider.setValue(0)
    # Accept one (Enter).
    top = max(preds, key=lambda i: i.score)
    canvas.select_ids([top.id])
    w.acts.accept.trigger()
    assert p.instance(top.id).accepted

    # Edits on a reviewed image with known shapes.
    img = reviewed[0].id
    _show(qtbot, w, img)
    stack = w.editor.stack()
    inst = max(p.instances(img), key=lambda i: (i.box[2] - i.box[0]) * (i.box[3] - i.box[1]))
    x1, y1, x2, y2 = inst.box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2

    # Move with the mouse: the box and its mask move together, as one undo step.
    drag(canvas, (cx, cy), (cx + 5, cy + 3))
    moved = p.instance(inst.id)
    assert moved.box == pytest.approx((x1 + 5, y1 + 3, x2 + 5, y2 + 3), abs=0.3)
    assert M.area(moved.mask) == M.area(inst.mask)
    mb = M.bbox_xyxy(moved.mask)
    ib = M.bbox_xyxy(inst.mask)
    assert mb[0] - ib[0] == 5 and mb[1] - ib[1] == 3
    assert stack.count() == 1
    stack.undo()
    assert p.instance(inst.id).box == pytest.approx(inst.box)
    stack.redo()
    assert p.instance(inst.id).box == pytest.approx(moved.box)

    # Resize by the bottom-right handle.
    canvas.select_ids([inst.id])
    bx1, by1, bx2, by2 = moved.box
    drag(canvas, (bx2, by2), (bx2 + 4, by2 + 2))
    resized = p.instance(inst.id)
    assert resized.box == pytest.approx((bx1, by1, bx2 + 4, by2 + 2), abs=0.3)
    stack.undo()
    assert p.instance(inst.id).box == pytest.approx(moved.box)
    stack.redo()

    # Paint pixels into the mask with the brush, then erase some.
    canvas.select_ids([inst.id])
    w.acts.set_tool(Tool.BRUSH)
    canvas.view.brush_radius = 2
    before = M.decode(p.instance(inst.id).mask).astype(bool)
    ys, xs = np.nonzero(~before)
    # a background pixel right next to the box, inside the image
    px, py = min(resized.box[2] + 1, 125), cy
    drag(canvas, (px, py), (px, py + 3))
    painted = M.decode(p.instance(inst.id).mask).astype(bool)
    added = painted & ~before
    assert added.sum() >= 6 and not (before & ~painted).any()
    assert added[int(py), int(px)]
    stack.undo()
    assert (M.decode(p.instance(inst.id).mask).astype(bool) == before).all()
    stack.redo()
    w.acts.set_tool(Tool.ERASER)
    inside = np.argwhere(before)
    ey, ex = inside[len(inside) // 2]
    drag(canvas, (ex + 0.5, ey + 0.5), (ex + 0.5, ey + 1.5))
    erased = M.decode(p.instance(inst.id).mask).astype(bool)
    assert not erased[ey, ex] and (painted & ~erased).sum() >= 6
    stack.undo()
    assert (M.decode(p.instance(inst.id).mask).astype(bool) == painted).all()
    stack.redo()
    w.acts.set_tool(Tool.SELECT)

    # Keypoints: drag one, then V cycles its visibility.
    kite_img, kite = None, None
    for r in reviewed:
        for i in p.instances(r.id):
            if any(v == 2 for _, _, v in i.keypoints):
                kite_img, kite = r.id, i
                break
        if kite:
            break
    assert kite is not None, "the synthetic scenes contain a labelled kite"
    _show(qtbot, w, kite_img)
    kstack = w.editor.stack()
    k = next(j for j, (_, _, v) in enumerate(kite.keypoints) if v == 2)
    kx, ky, _ = kite.keypoints[k]
    drag(canvas, (kx, ky), (kx + 3, ky + 2))
    dragged = p.instance(kite.id)
    assert dragged.keypoints[k][:2] == pytest.approx((kx + 3, ky + 2), abs=0.3)
    assert dragged.box == kite.box
    assert canvas.active_keypoint == (kite.id, k)
    w.acts.keypoint_vis.trigger()
    assert p.instance(kite.id).keypoints[k][2] == 1
    kstack.undo()
    assert p.instance(kite.id).keypoints[k][2] == 2
    kstack.undo()
    assert p.instance(kite.id).keypoints[k][:2] == pytest.approx((kx, ky))
    kstack.redo()
    kstack.redo()
    assert p.instance(kite.id).keypoints[k] == pytest.approx((kx + 3, ky + 2, 1), abs=0.3)

    # Draw a new box: the model's second stage fills in its mask.
    target = new[1].id
    _show(qtbot, w, target)
    w.acts.set_tool(Tool.BOX)
    w.editor.current_category = next(iter(w.editor.categories))
    n_before = len(p.instances(target))
    drag(canvas, (20, 20), (60, 50))
    qtbot.waitUntil(lambda: any(i.mask is not None and i.changed_by != MODEL
                                for i in p.instances(target)), timeout=30_000)
    mine = [i for i in p.instances(target) if i.changed_by != MODEL]
    assert len(p.instances(target)) >= n_before + 1 and mine[0].box == pytest.approx((20, 20, 60, 50), abs=0.3)
    w.acts.set_tool(Tool.SELECT)

    # Delete and duplicate, with undo.
    canvas.select_ids([mine[0].id])
    w.acts.duplicate.trigger()
    assert len([i for i in p.instances(target) if i.changed_by != MODEL]) == 2
    w.acts.delete.trigger()
    assert len([i for i in p.instances(target) if i.changed_by != MODEL]) == 1
    w.editor.stack().undo()
    assert len([i for i in p.instances(target) if i.changed_by != MODEL]) == 2

    # Mark reviewed (Space): shown predictions are kept and accepted, the image is reviewed.
    w.acts.score_slider.setValue(0)
    with qtbot.waitSignal(w.image_shown, timeout=10_000):
        QTest.keyClick(canvas, Qt.Key.Key_Space)
    assert p.image(target).status is ImageStatus.REVIEWED
    assert all(i.touched_by_person for i in p.instances(target))
    w.close()  # joins the worker: the next image's prediction may have landed meanwhile
    final = {i.id: i for r in p.images() for i in p.instances(r.id)}

    # Reopen: everything is there.
    with Project(folder) as again:
        reopened = {i.id: i for r in again.images() for i in again.instances(r.id)}
        assert reopened == final
        assert again.image(target).status is ImageStatus.REVIEWED
        assert again.instance(kite.id).keypoints[k][2] == 1
        # After painting and erasing, the box follows the mask.
        final_inst = again.instance(inst.id)
        assert final_inst.box == pytest.approx(M.bbox_xyxy(final_inst.mask))
        assert (M.decode(final_inst.mask).astype(bool) == erased).all()


def test_pre_annotate_all_then_close_leaves_nothing_running(qtbot, setup):
    w, p, _ = setup
    w.acts.predict_all.trigger()
    assert w.models.progress.isVisible() and w.acts.cancel.isEnabled()
    qtbot.waitUntil(lambda: not w.models.progress.isVisible(), timeout=60_000)
    assert p.status_counts()[ImageStatus.NEW] == 0
    assert "Pre-annotation finished" in w.statusBar().currentMessage()
    thread = w.model_side.thread.thread
    w.close()
    assert not thread.isRunning()
    assert not [t for t in w.findChildren(QThread) if t.isRunning()]
    assert not [t for t in w.findChildren(QTimer) if t.isActive()]
    assert w.loader.pool.activeThreadCount() == 0
