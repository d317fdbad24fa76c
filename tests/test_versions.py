"""The promotion rule (detector/versions.py): one place for the app's Train, training while
labeling and ``loupe train``."""

from detector.store import Project
from detector.synthetic import generate
from detector.versions import headline, next_checkpoint, register


def _m(ap):
    return {"segm": {"AP": ap, "AP50": ap, "AP75": ap}, "bbox": {"AP": ap + 0.1}, "images": 2}


def test_a_new_model_is_promoted_unless_it_is_worse_on_the_same_held_out_images(tmp_path):
    generate(tmp_path / "f", n_images=2, size=(32, 24))
    with Project(tmp_path / "f") as p:
        first = register(p, tmp_path / "v1-1.pt", _m(0.30), None, {"lr": 1e-3}, 40)
        assert first.promoted and p.active_model().id == first.version.id  # nothing was active
        assert first.version.name == "v1" and first.version.metrics["compared_with"] is None
        worse = register(p, tmp_path / "v2-2.pt", _m(0.25), _m(0.31), {}, 80)
        assert not worse.promoted and p.active_model().id == first.version.id
        assert worse.version.metrics["compared_with"] == 0.31 and "not better" in worse.text()
        equal = register(p, tmp_path / "v3-3.pt", _m(0.31), _m(0.31), {}, 120)
        assert equal.promoted and p.active_model().id == equal.version.id and "(before: 0.31)" in equal.text()
        unscored = register(p, tmp_path / "v4-4.pt", None, None, {}, 160)  # no held-out images
        assert unscored.promoted and unscored.ap is None
        assert next_checkpoint(p, 7).name == "v5-7.pt"
    assert headline({"bbox": {"AP": 0.4}}) == 0.4 and headline({}) is None


def test_a_version_suggests_the_slider_its_held_out_images_cost_least_at():
    from detector.versions import slider_advice

    a = slider_advice({"images": 3, "slider": {"best": 0.7, "seconds_per_image": {"0.50": 28.5, "0.70": 17.6,
                                                                                  "1.00": 21.4}}})
    assert (a.value, a.seconds, a.default_seconds, a.images) == (0.7, 17.6, 28.5, 3)
    assert "3 held-out images" in a.text() and "~18 s an image (at 0.50: ~28 s)" in a.text()
    hide = slider_advice({"images": 1, "slider": {"best": 1.0, "seconds_per_image": {"1.00": 20.0, "0.50": 30.0}}})
    assert "1 held-out image clicking or boxing every object" in hide.text() and "little or nothing" in hide.text()
    assert slider_advice({"segm": {"AP": 0.3}}) is None and slider_advice(None) is None


def test_the_models_masks_stay_in_the_box_fill_only_where_they_save_time(tmp_path):
    import numpy as np

    from detector import masks as M
    from detector.domain import Instance
    from detector.evaluation import fill_choice
    from detector.versions import fill_note, fill_uses_model, version_for

    def box_inst(x0, y0, x1, y1, mask=True):
        m = np.zeros((40, 60), np.uint8)
        m[y0:y1, x0:x1] = 1
        return Instance(1, (float(x0), float(y0), float(x1), float(y1)), M.encode(m) if mask else None)

    truth = [box_inst(5, 5, 25, 25), box_inst(30, 10, 50, 30)]
    right = lambda box, cat: box_inst(*map(int, box))  # noqa: E731
    half = lambda box, cat: box_inst(int(box[0]), int(box[1]), int((box[0] + box[2]) / 2), int(box[3]))  # noqa: E731
    better = fill_choice([(truth, right)], [(truth, half)])
    assert better["model_masks"] and better["objects"] == 2
    assert better["model_seconds_per_object"] < better["cuts_seconds_per_object"]
    assert not fill_choice([(truth, half)], [(truth, right)])["model_masks"]
    assert not fill_choice([(truth, right)], [(truth, right)])["model_masks"]  # a tie: the cuts alone
    boxes_only = [box_inst(5, 5, 25, 25, mask=False)]  # nothing to judge the masks by: kept
    assert fill_choice([(boxes_only, right)], [(boxes_only, right)])["model_masks"]
    assert fill_uses_model({"fill": better}) and not fill_uses_model({"fill": {"model_masks": False}})
    assert fill_uses_model({}) and fill_note({}) == "" and "compete" in fill_note({"fill": better})
    generate(tmp_path / "f", n_images=2, size=(32, 24))
    with Project(tmp_path / "f") as p:
        v = register(p, tmp_path / "v1-1.pt", {**_m(0.3), "fill": better}, None, {}, 4).version
        assert version_for(p, "active").id == v.id and version_for(p, str(tmp_path / "v1-1.pt")).id == v.id
        assert version_for(p, str(tmp_path / "other.pt")) is None
