"""The editor and its undo commands on a real project and canvas, without a MainWindow; and the
Qt-free geometry the canvas tools use (a drag's result, brush strokes, shifted masks)."""

import numpy as np
import pytest

from app.canvas import ImageCanvas
from app.canvas_tools import dragged
from app.editor import Editor
from detector import masks as M
from detector.domain import MODEL, Category, ImageStatus, Instance
from detector.store import Project


def _predict(p, image_id, category_id, *scores):
    """The model's guesses side by side on the image, with these scores."""
    p.replace_predictions(image_id, [Instance(category_id, (5 + 35 * k, 5, 20 + 40 * k, 20), score=sc, source=MODEL,
                                              changed_by=MODEL) for k, sc in enumerate(scores)], "test-model")


@pytest.fixture
def editing(qtbot, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(tmp_path / "a.png")
    p = Project(tmp_path)
    p.scan()
    p.add_category(Category("cell", "#ff0000"))
    p.add_category(Category("person", "#00ff00", ("head", "foot")))
    canvas = ImageCanvas()
    qtbot.addWidget(canvas)
    ed = Editor(canvas)
    ed.set_project(p)
    (rec,) = p.images()
    canvas.set_image(np.zeros((60, 80, 3), np.uint8))
    ed.set_image(rec.id)
    ed.changed.connect(lambda: canvas.set_instances(p.instances(rec.id), ed.categories))
    yield ed, canvas, p, rec.id
    p.close()


def test_a_drawn_box_asks_for_its_mask_by_instance_id_and_only_an_untouched_box_takes_it(qtbot, editing):
    ed, canvas, p, image_id = editing
    with qtbot.waitSignal(ed.fill_requested) as sig:
        ed.add_box((10.0, 10.0, 30.0, 40.0))
    img, boxes, cats, ids = sig.args
    (inst,) = p.instances(image_id)
    assert (img, boxes, ids) == (image_id, [[10.0, 10.0, 30.0, 40.0]], [inst.id])
    assert canvas.selected_ids() == [inst.id]
    # A second box of the same size and place: the answer goes to the instance it names.
    ed.add_box((10.0, 10.0, 30.0, 40.0))
    twin = next(i for i in p.instances(image_id) if i.id != inst.id)
    rle = M.from_box((10, 10, 30, 40), 60, 80)
    ed.apply_fill(image_id, [Instance(inst.category_id, inst.box, rle, id=inst.id)])
    by_id = {i.id: i for i in p.instances(image_id)}
    assert by_id[inst.id].mask is not None and by_id[twin.id].mask is None
    # A box the person moved before the answer came keeps what the person did.
    moved = twin.with_(box=(12.0, 10.0, 32.0, 40.0))
    ed.edit([(twin, moved)], "Move")
    ed.apply_fill(image_id, [Instance(twin.category_id, twin.box, rle, id=twin.id)])
    assert p.instance(twin.id).mask is None and p.instance(twin.id).box == moved.box
    # Undo goes back one edit at a time, through the store.
    ed.stack().undo()
    assert p.instance(twin.id).box == twin.box
    ed.stack().undo()
    assert p.instance(inst.id).mask is None
    ed.stack().redo()
    assert p.instance(inst.id).mask is not None


def test_mark_reviewed_keeps_what_is_shown_and_undo_restores_the_predictions(editing):
    ed, canvas, p, image_id = editing
    _predict(p, image_id, ed.current_category, 0.9, 0.2)
    ed.mark_reviewed(0.5)
    (kept,) = p.instances(image_id)
    assert kept.accepted and kept.score == 0.9
    assert p.image(image_id).status is ImageStatus.REVIEWED
    ed.stack().undo()  # one macro: status, the dropped and the accepted prediction all come back
    assert sorted(i.score for i in p.instances(image_id)) == [0.2, 0.9]
    assert not any(i.accepted for i in p.instances(image_id))
    assert p.image(image_id).status is not ImageStatus.REVIEWED


def test_keypoints_are_placed_in_order_then_category_change_resets_them(editing):
    ed, canvas, p, image_id = editing
    person = next(c.id for c in ed.categories.values() if c.name == "person")
    ed.current_category = person
    ed.add_box((10.0, 10.0, 40.0, 50.0))
    (inst,) = p.instances(image_id)
    assert ed.next_missing_name() == "head"
    assert ed.place_next_keypoint(20, 15) is True  # "foot" still missing
    assert ed.next_missing_name() == "foot"
    assert ed.place_next_keypoint(22, 48) is False
    assert p.instance(inst.id).keypoints == ((20, 15, 2), (22, 48, 2))
    cell = next(c.id for c in ed.categories.values() if c.name == "cell")
    ed.set_category(cell)
    assert p.instance(inst.id).category_id == cell and p.instance(inst.id).keypoints == ()


def test_dragged_moves_clamps_resizes_and_moves_keypoints():
    inst = Instance(1, (10.0, 10.0, 30.0, 20.0), M.from_box((10, 10, 30, 20), 40, 50),
                    ((12.0, 12.0, 2), (0.0, 0.0, 0)))
    moved = dragged(inst, {"kind": "move", "from": (15, 15), "to": (50, 15), "done": True}, (40, 50))
    assert moved.box == (30.0, 10.0, 50.0, 20.0)  # clamped at the right edge (dx 35 -> 20)
    assert moved.keypoints == ((32.0, 12.0, 2), (0.0, 0.0, 0))  # an unlabelled point stays put
    assert M.bbox_xyxy(moved.mask) == (30.0, 10.0, 50.0, 20.0)
    live = dragged(inst, {"kind": "move", "from": (15, 15), "to": (20, 15)}, (40, 50))
    assert live.mask == inst.mask  # the mask moves once, when the drag ends
    resized = dragged(inst, {"kind": "resize", "handle": "tl", "from": (10, 10), "to": (35, 25)}, (40, 50))
    assert resized.box == (30.0, 20.0, 35.0, 25.0)  # dragged past the far corner: normalised
    kp = dragged(inst, {"kind": "keypoint", "k": 0, "from": (12, 12), "to": (14, 11)}, (40, 50))
    assert kp.keypoints[0] == (14.0, 11.0, 2) and kp.box == inst.box


def test_brush_grows_erase_fits_and_shift_drops_what_leaves_the_image():
    stroke = M.disc((40, 50), [(5.5, 5.5), (25.5, 5.5)], 2)
    assert stroke[5, 5] and stroke[5, 15] and stroke[5, 25] and not stroke[20, 20]
    rle, box = M.brush(None, (10.0, 10.0, 20.0, 20.0), stroke, erase=False)  # a plain box counts as filled
    assert box == (3.0, 3.0, 28.0, 20.0) and M.decode(rle)[15, 15]
    mask = M.from_box((0, 0, 20, 20), 40, 50)
    rle, box = M.brush(mask, (0.0, 0.0, 20.0, 20.0), M.decode(M.from_box((0, 0, 20, 10), 40, 50)).astype(bool),
                       erase=True)
    assert box == (0.0, 10.0, 20.0, 20.0)
    assert M.brush(mask, (0.0, 0.0, 20.0, 20.0), np.ones((40, 50), bool), erase=True) is None
    m = np.zeros((4, 4), np.uint8)
    m[0, 0] = m[3, 3] = 1
    assert M.shift(m, 1, 1).tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_what_is_hidden_in_the_view_state_is_dropped_on_review(editing):
    """The canvas and the editor read one ViewState: an instance unticked there is not kept."""
    ed, canvas, p, image_id = editing
    _predict(p, image_id, ed.current_category, 0.9, 0.8)
    canvas.set_instances(p.instances(image_id), ed.categories)
    hidden = next(i for i in p.instances(image_id) if i.score == 0.8)
    canvas.view.hidden_ids.add(hidden.id)
    canvas.apply_visibility()
    assert not canvas.items_by_id[hidden.id].isVisible()
    canvas.apply_threshold(0.85)
    assert ed.view is canvas.view and ed.view.min_score == 0.85
    ed.mark_reviewed(ed.view.min_score)
    assert [i.score for i in p.instances(image_id)] == [0.9]
