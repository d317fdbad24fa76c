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
    assert "1 held-out image drawing every object" in hide.text()
    assert slider_advice({"segm": {"AP": 0.3}}) is None and slider_advice(None) is None
