"""The simulated annotator prices corrections by hand-made cases."""

import numpy as np
import pytest

from detector import annotator as A
from detector import masks as M
from detector.domain import MODEL, Instance

C = A.COSTS
H, W = 60, 80


def inst(x1, y1, x2, y2, cat=1, score=None, keypoints=(), mask=True):
    m = np.zeros((H, W), np.uint8)
    m[y1:y2, x1:x2] = 1
    return Instance(cat, (float(x1), float(y1), float(x2), float(y2)), M.encode(m) if mask else None,
                    tuple(keypoints), score, source=MODEL if score is not None else "person")


TRUTH = [inst(5, 5, 25, 25), inst(40, 10, 70, 40)]


def look(n_shown):
    return C.look_image + n_shown * C.verify_instance


def test_a_perfect_prediction_costs_only_the_look_and_confirm():
    shown = [g.with_(score=0.9) for g in TRUTH]
    cost = A.review_cost(shown, TRUTH)
    assert cost.seconds == pytest.approx(look(2))
    assert set(cost.actions) == {"look", "verify"}


def test_a_missing_instance_costs_a_box_plus_a_fill():
    shown = [TRUTH[0].with_(score=0.9)]
    good_fill = lambda box, cat: inst(*map(int, box), cat=cat, score=1.0)  # noqa: E731
    cost = A.review_cost(shown, TRUTH, fill=good_fill)
    assert cost.seconds == pytest.approx(look(1) + C.box)
    assert cost.actions["draw box"] == 1
    # Where the model's fill is poor the person traces it; without a model, too.
    bad_fill = lambda box, cat: inst(0, 50, 3, 53, cat=cat, score=1.0)  # noqa: E731
    assert A.review_cost(shown, TRUTH, fill=bad_fill).seconds == pytest.approx(look(1) + C.box + C.polygon)
    assert A.review_cost(shown, TRUTH).seconds == pytest.approx(look(1) + C.box + C.polygon)
    # A fill that is nearly right (IoU 0.64) is touched up with the brush.
    near_fill = lambda box, cat: inst(40, 10, 70, 29, cat=cat, score=1.0)  # noqa: E731
    assert A.review_cost(shown, TRUTH, fill=near_fill).seconds == pytest.approx(look(1) + C.box + C.touch_up)


def test_a_false_positive_costs_one_delete():
    shown = [g.with_(score=0.9) for g in TRUTH] + [inst(0, 45, 10, 58, score=0.6)]
    cost = A.review_cost(shown, TRUTH)
    assert cost.seconds == pytest.approx(look(3) + C.delete)
    assert cost.actions["delete"] == 1


def test_a_wrong_class_is_fixed_and_a_loose_mask_touched_up():
    loose = inst(5, 5, 25, 19, score=0.8)  # IoU 0.7 with TRUTH[0]
    assert 0.5 <= M.iou(loose, TRUTH[0]) < 0.75
    shown = [loose, TRUTH[1].with_(category_id=2, score=0.9)]
    cost = A.review_cost(shown, TRUTH)
    assert cost.seconds == pytest.approx(look(2) + C.touch_up + C.fix_class)
    # ...unless a box with the model's fill is cheaper.
    good_fill = lambda box, cat: inst(*map(int, box), cat=cat, score=1.0)  # noqa: E731
    assert A.review_cost(shown, TRUTH, fill=good_fill).seconds == pytest.approx(look(2) + C.box + C.fix_class)


def test_a_prediction_overlapping_too_little_is_deleted_and_the_object_drawn():
    shown = [inst(5, 5, 25, 12, score=0.9)]  # IoU 0.35
    cost = A.review_cost(shown, TRUTH[:1])
    assert cost.seconds == pytest.approx(look(1) + C.delete + C.box + C.polygon)


def test_keypoints_are_dragged_placed_and_hidden():
    kps = ((10.0, 10.0, 2), (20.0, 20.0, 2), (15.0, 15.0, 0))
    truth = [inst(5, 5, 25, 25, keypoints=kps)]
    pred_kps = ((10.5, 10.0, 2), (0.0, 0.0, 0), (15.0, 15.0, 2))
    cost = A.review_cost([truth[0].with_(keypoints=pred_kps, score=0.9)], truth)
    assert cost.actions["place keypoint"] == 1 and cost.actions["hide keypoint"] == 1
    assert "drag keypoint" not in cost.actions  # within tolerance
    moved = ((16.0, 10.0, 2), (20.0, 20.0, 2), (15.0, 15.0, 0))
    cost = A.review_cost([truth[0].with_(keypoints=moved, score=0.9)], truth)
    assert cost.actions["drag keypoint"] == 1 and cost.seconds == pytest.approx(look(1) + C.click)


def test_box_only_data_uses_box_iou_and_corner_drags():
    truth = [inst(5, 5, 25, 25, mask=False)]
    shifted = inst(5, 5, 25, 19, score=0.9, mask=False)
    assert A.review_cost([shifted], truth).seconds == pytest.approx(look(1) + C.adjust_box)
    assert A.review_cost([], truth).seconds == pytest.approx(look(0) + C.box)


def test_labeling_from_scratch_is_a_polygon_per_object_and_a_click_per_keypoint():
    truth = [inst(5, 5, 25, 25, keypoints=((10.0, 10.0, 2), (1.0, 1.0, 0))), inst(40, 10, 70, 40, mask=False)]
    cost = A.manual_cost(truth)
    assert cost.seconds == pytest.approx(C.look_image + C.polygon + C.click + C.box)
    # Correcting nothing-shown costs about as much as from scratch (a box before each trace).
    assert A.review_cost([], truth).seconds >= cost.seconds


def test_the_slider_hides_low_scores_and_the_highest_score_matches_first():
    shown = A.shown_at([TRUTH[0].with_(score=0.3), TRUTH[0].with_(score=0.8)], 0.5)
    assert [p.score for p in shown] == [0.8]
    dup = [TRUTH[0].with_(score=0.6), TRUTH[0].with_(score=0.95)]
    pairs = A.match(dup, TRUTH)
    assert [(k, j) for k, j, _ in pairs] == [(1, 0)]


def test_the_slider_that_costs_least_hides_false_positives_but_keeps_true_ones():
    good_fill = lambda box, cat: inst(*map(int, box), cat=cat, score=1.0)  # noqa: E731
    # True objects scored 0.75 and 0.9; false positives at 0.3 and 0.6.
    preds = [TRUTH[0].with_(score=0.75), TRUTH[1].with_(score=0.9), inst(0, 45, 10, 58, score=0.3),
             inst(30, 45, 38, 58, score=0.6)]
    by = A.slider_costs([(preds, TRUTH, good_fill)])
    assert set(by) == set(A.SLIDER_GRID) and min(A.SLIDER_GRID) == 0.1 and max(A.SLIDER_GRID) == 1.0
    assert by[0.5] == pytest.approx(look(3) + C.delete)
    assert by[0.7] == pytest.approx(look(2))  # both false positives hidden, both objects kept
    assert by[0.8] == pytest.approx(look(1) + C.box)  # one object hidden: drawn, the fill is right
    assert by[1.0] == pytest.approx(look(0) + 2 * C.box)  # nothing shown: every object drawn
    # The cheapest values are 0.65 and 0.7 (tied); the one nearest the default 0.5 wins.
    assert A.best_slider(by) == 0.65
    # A model whose predictions are all wrong: showing nothing (drawing, filled) is cheapest.
    wrong = [inst(0, 45, 10, 58, score=0.95), inst(30, 45, 38, 58, score=0.97)]
    assert A.best_slider(A.slider_costs([(wrong, TRUTH, good_fill)])) == 1.0
    # Several images: the mean decides; nothing to price keeps the default.
    both = A.slider_costs([(preds, TRUTH, good_fill), (wrong, TRUTH, good_fill)])
    assert both[0.5] == pytest.approx((by[0.5] + A.slider_costs([(wrong, TRUTH, good_fill)])[0.5]) / 2)
    assert A.best_slider({}) == 0.5 and A.slider_costs([]) == {}


def test_drawing_every_object_is_priced_by_the_fill():
    good = lambda box, cat: inst(*map(int, box), cat=cat, score=1.0)  # noqa: E731
    half = lambda box, cat: inst(int(box[0]), int(box[1]), int((box[0] + box[2]) / 2), int(box[3]), cat=cat)  # noqa: E731
    assert A.draw_seconds([(TRUTH, good)]) == (pytest.approx(C.box), 2)
    # Half of each box filled: mask IoU 0.5, a touch-up each.
    assert A.draw_seconds([(TRUTH, half), ([], good)]) == (pytest.approx(C.box + C.touch_up), 2)
    assert A.draw_seconds([(TRUTH, None)]) == (pytest.approx(C.box + C.polygon), 2)
    assert A.draw_seconds([]) == (0.0, 0)


def test_the_held_out_slider_shows_predictions_only_where_they_save_three_percent():
    """One right prediction saves a box (7 s) for a check (1.6 s): on an image of 10 objects that is
    7 % of its seconds and the slider shows it; among 40 objects 1.9 %, and the slider hides
    every prediction (held-out images are few; a wrong show costs more than a wrong hide)."""
    from detector.evaluation import SHOW_MARGIN, slider_choice

    good_fill = lambda box, cat: inst(*map(int, box), cat=cat, score=1.0)  # noqa: E731
    objects = [inst(x, y, x + 4, y + 4) for y in range(2, 60, 12) for x in range(2, 80, 10)]
    assert len(objects) == 40 and SHOW_MARGIN == 0.03
    for truth, shows in ((objects[:10], True), (objects, False)):
        choice = slider_choice([([truth[0].with_(score=0.9)], truth, good_fill)])
        seconds = {float(s): c for s, c in choice["seconds_per_image"].items()}
        assert seconds[1.0] == pytest.approx(look(0) + len(truth) * C.box)
        assert seconds[0.5] == pytest.approx(look(1) + (len(truth) - 1) * C.box)
        assert A.best_slider(seconds) == 0.5  # cheapest either way
        assert choice["best"] == (0.5 if shows else 1.0)
