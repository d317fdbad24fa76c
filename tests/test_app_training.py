"""Train from the GUI: a child process streams losses to the chart; cancel works; a finished run
becomes a model version with metrics, is swapped in and re-annotates the unreviewed images."""

import json
from pathlib import Path

import pytest

from app.main_window import MainWindow
from dataclasses import replace

from app.autotrain import AutoTrainSettings
from detector.train_config import TrainConfig
from detector.coco import import_coco
from detector.domain import MODEL, ImageStatus
from detector.store import Project
from detector.synthetic import generate
from detector.annotator import SLIDER_GRID
from detector.versions import SliderAdvice, fill_note, slider_advice

SMALL = dict(model_overrides={"rpn_batch_size_per_image": 64, "box_batch_size_per_image": 64,
                              "anchor_sizes": (8, 16, 32, 64, 128), "box_detections_per_img": 20},
             holdout=0.4, seed=1)


@pytest.fixture
def window(qtbot, tmp_path):
    folder = tmp_path / "f"
    gt = generate(folder, n_images=8, seed=5, size=(128, 96))
    data = json.loads(gt.read_text())
    keep = {i["id"] for i in data["images"][:6]}
    data["images"] = [i for i in data["images"] if i["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    (tmp_path / "six.json").write_text(json.dumps(data))
    p = Project(folder)
    p.scan()
    import_coco(p, tmp_path / "six.json")
    w = MainWindow()
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.image_shown, timeout=10_000):
        w.set_project(p)
    w.training.config = TrainConfig(iterations=40, batch_size=2, min_size=96, weights="none",
                                    backbone="resnet18", augment=False, **SMALL)
    yield w, p
    if w.training.runner.running:
        w.training.runner.kill()
    w.models.cancel()
    qtbot.waitUntil(lambda: w.model_side.batch_request < 0, timeout=30_000)
    w.close()


def test_train_cancel_then_complete_swaps_model_and_reannotates(qtbot, window):
    w, p = window
    chart = w.training.panel.chart
    # Cancel: stops within a few seconds, no version, the app keeps working.
    w.training.config = replace(w.training.config, iterations=500)
    w.acts.train.trigger()
    assert w.training.runner.running and not w.acts.train.isEnabled()
    qtbot.waitUntil(lambda: "loss" in chart.series and chart.series["loss"].count() >= 2, timeout=120_000)
    with qtbot.waitSignal(w.training.runner.finished, timeout=30_000) as fin:
        w.training.panel.cancel_button.click()
    assert fin.args[0]["cancelled"] and not fin.args[0]["ok"]
    assert p.models() == [] and w.acts.train.isEnabled()
    assert "cancelled" in w.training.panel.result.text()

    # A full run.
    w.training.config = replace(w.training.config, iterations=24)
    with qtbot.waitSignal(w.training.runner.finished, timeout=300_000) as fin:
        w.acts.train.trigger()
    result = fin.args[0]
    assert result["ok"], result["message"]
    names = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask",
             "loss_keypoint", "loss", "lr"}
    assert names <= set(chart.series)
    assert all(chart.series[k].count() >= 12 for k in ("loss_objectness", "loss_mask", "loss", "lr"))
    (version,) = p.models()
    assert version.active and version.images_seen >= 24  # 24 steps of batch 2 (an odd last batch is 1)
    assert set(version.metrics) >= {"bbox", "segm", "keypoints"}
    assert 0 <= version.metrics["segm"]["AP"] <= 1 and version.metrics["images"] >= 1
    log = Path(result["log"])
    assert log.exists() and any(json.loads(x)["kind"] == "step" for x in log.read_text().splitlines())
    # Hot swap, then the images not yet reviewed are re-annotated by the new model.
    qtbot.waitUntil(lambda: w.model_side.info is not None and w.model_side.info.name == version.path, timeout=60_000)
    qtbot.waitUntil(lambda: p.status_counts()[ImageStatus.NEW] == 0 and not w.models.progress.isVisible(),
                    timeout=60_000)
    # The confidence slider follows the new model: the value its held-out images cost least at.
    advice = slider_advice(version.metrics)
    assert advice is not None and advice.value in SLIDER_GRID and advice.images == version.metrics["images"]
    assert w.acts.score_slider.value() == round(advice.value * 100)
    assert w.view.min_score == pytest.approx(advice.value) and "suggests" in w.acts.score_slider.toolTip()
    assert f"suggests confidence {advice.value:.2f}" in w.models.device_label.text()
    # It names the device and its precision (bfloat16 where the CPU has it in hardware).
    from detector.inference import describe_device, pick_device
    assert w.model_side.info.device == describe_device(pick_device())  # "CPU · bfloat16" on such a CPU
    assert w.models.device_label.text().startswith(w.model_side.info.device + " · model: ")
    # The Box tool's fill follows it too: the model's masks in it or not, as its held-out images said.
    assert w.model_side.info.fill == fill_note(version.metrics) and "Box tool" in w.model_side.info.fill
    assert w.model_side.info.fill in w.models.device_label.toolTip()
    other = 0.85 if advice.value != 0.85 else 0.75
    w.acts.suggest_slider(SliderAdvice(other, 10.0, 12.0, 2))  # the person has not moved it: set
    assert w.acts.score_slider.value() == round(other * 100)
    # said in the status bar in full at the default window size, beside the model label
    msg = w.statusBar().currentMessage()
    assert msg == f"Confidence slider set to {other:.2f}: {SliderAdvice(other, 10.0, 12.0, 2).short()}."
    w.resize(1280, 800)
    free = w.width() - w.models.device_label.sizeHint().width() - 40  # the status bar spans the window
    assert w.statusBar().fontMetrics().horizontalAdvance(msg) < free
    hidden = SliderAdvice(1.0, 10.0, 12.0, 2)  # the longest form
    assert w.statusBar().fontMetrics().horizontalAdvance(f"Confidence slider set to 1.00: {hidden.short()}.") < free
    w.acts.score_slider.setValue(30)  # moved by the person: a later suggestion keeps it
    w.acts.suggest_slider(SliderAdvice(0.8, 10.0, 12.0, 2))
    assert w.acts.score_slider.value() == 30 and "0.80" in w.acts.score_slider.toolTip()
    unreviewed = p.images([ImageStatus.PREDICTED])
    assert len(unreviewed) == 2
    stamps = [i.changed_at for r in unreviewed for i in p.instances(r.id) if i.changed_by == MODEL]
    assert stamps and min(stamps) > version.created_at


def test_refuses_to_train_without_reviewed_images(qtbot, tmp_path):
    generate(tmp_path / "g", n_images=3, size=(64, 48))
    w = MainWindow(Project(tmp_path / "g"))
    qtbot.addWidget(w)
    w.acts.train.trigger()
    assert not w.training.runner.running
    assert "at least 2 reviewed images" in w.statusBar().currentMessage()
    w.close()


def test_settings_dialog_round_trips_every_choice(qtbot, tmp_path, monkeypatch):
    from app.train_dialogs import TrainingSettingsDialog

    start = TrainConfig(iterations=300, lr=0.002, batch_size=4, min_size=640, trainable_layers=3,
                        augment=False, device="cpu", weights="none", backbone="resnet18", optimizer="adamw",
                        model_overrides={"box_detections_per_img": 20}, seed=3)
    dlg = TrainingSettingsDialog(start, AutoTrainSettings())
    qtbot.addWidget(dlg)
    assert dlg.config() == start  # what the dialog does not show is kept too
    assert dlg.auto() == AutoTrainSettings()
    dlg.optimizer.setCurrentIndex(dlg.optimizer.findData("sgd"))
    dlg.lr.setValue(0)  # automatic
    args = dlg.config().for_project(None).to_argv()
    assert args[args.index("--optimizer") + 1] == "sgd" and "--lr" not in args
    dlg.optimizer.setCurrentIndex(dlg.optimizer.findData(""))  # automatic: the trainer decides
    assert "--optimizer" not in dlg.config().for_project(None).to_argv()
    dlg.auto_every.setValue(3)
    assert dlg.auto() == AutoTrainSettings(on=True, every=3)
    assert dlg.config().trunk == "imagenet"  # the default
    dlg.trunk.setCurrentIndex(dlg.trunk.findData("none"))
    args = dlg.config().for_project(None).to_argv()
    assert args[args.index("--trunk") + 1] == "none"
    mine = tmp_path / "resnet18_mine.pth"
    monkeypatch.setattr("app.train_dialogs.QFileDialog.getOpenFileName", lambda *a: (str(mine), ""))
    dlg.trunk.setCurrentIndex(dlg.trunk.findData("__file__"))
    dlg.trunk.activated.emit(dlg.trunk.currentIndex())  # as a click on the entry does
    assert dlg.config().trunk == str(mine)


def test_auto_training_after_n_reviews_promotes_by_ap_and_reannotates(qtbot, window):
    """With a model in place, reviewing N more images starts a background run; its model is kept
    only if its held-out AP is not worse, and then the unreviewed images are re-annotated."""
    w, p = window
    w.training.config = replace(w.training.config, iterations=12)
    assert not w.training.autotrain.enabled()  # no model yet: nothing to improve on
    with qtbot.waitSignal(w.training.runner.finished, timeout=300_000) as fin:
        w.acts.train.trigger()
    assert fin.args[0]["ok"]
    qtbot.waitUntil(lambda: w.model_side.batch_request < 0 and p.status_counts()[ImageStatus.NEW] == 0, timeout=120_000)
    assert w.training.autotrain.enabled()
    assert "after 10 more reviewed images" in w.training.panel.auto.text()  # the default N
    w.training.autotrain.settings = AutoTrainSettings(every=1)
    w.training.autotrain.announce()
    assert "after 1 more reviewed image" in w.training.panel.auto.text()
    counted = p.get_meta("reviewed_at_last_training")  # a starting model: no count kept yet
    p.set_meta("reviewed_at_last_training", "0")
    w.training.autotrain.announce()
    assert w.training.panel.auto.text() == "auto-train at the next review"
    p.set_meta("reviewed_at_last_training", counted)
    first = p.active_model()
    todo = [r.id for r in p.images([ImageStatus.PREDICTED])]
    assert len(todo) == 2
    w.show_image(todo[0])
    qtbot.waitUntil(lambda: w.editor.image_id == todo[0] and w.canvas.has_image, timeout=10_000)
    w.mark_reviewed()  # a run starts by itself; the window stays usable
    assert w.training.runner.running
    with qtbot.waitSignal(w.training.runner.finished, timeout=300_000) as fin:
        w.acts.prev.trigger()  # the person keeps working
    assert fin.args[0]["ok"], fin.args[0]["message"]
    assert int(p.get_meta("reviewed_at_last_training")) == 7
    (second,) = [m for m in p.models() if m.id != first.id]
    # both models are measured on the new run's held-out images (the split grows with the reviews)
    old_ap, new_ap = second.metrics["compared_with"], second.metrics["segm"]["AP"]
    assert old_ap is not None
    assert second.active == (new_ap >= old_ap)  # promoted only when not worse
    if second.active:  # swapped in: the image nobody reviewed yet is annotated again, by it
        from detector.inference import model_identity

        by_second = model_identity(p, second.path)
        qtbot.waitUntil(lambda: w.model_side.batch_request < 0 and p.image(todo[1]).predicted_by == by_second,
                        timeout=120_000)
        assert all(i.changed_at > second.created_at for i in p.instances(todo[1]) if i.changed_by == MODEL)
    else:
        assert p.active_model().id == first.id and "not better" in w.training.panel.result.text()


def test_the_panel_shows_a_download_before_the_run_then_the_run(qtbot):
    from app.train_dock import TrainingPanel
    from detector.train_config import TrainEvent

    panel = TrainingPanel()
    qtbot.addWidget(panel)
    panel.started()
    panel.on_event(TrainEvent("prepare", 12, 44, message="downloading resnet18-f37072fd.pth: 12 of 44 MB"))
    bar = panel.progress
    assert (bar.minimum(), bar.maximum(), bar.value()) == (0, 44, 12)
    assert bar.text() == "downloading weights: 12 of 44 MB"
    assert panel.speed.text() == "downloading resnet18-f37072fd.pth"
    panel.on_event(TrainEvent("start", 0, 160, message="training on 8 images; profile cpu-fast: a CPU"))
    assert (bar.maximum(), bar.value(), bar.text()) == (160, 0, "step 0/160")
    assert "downloading" not in panel.speed.text()
    assert panel.profile.text() == "Profile cpu-fast: a CPU"
    # reasons longer than the dock is tall scroll, whole, instead of being clipped
    panel.resize(1180, 240)  # the dock at the default window size
    panel.show()
    long = "; ".join(f"reason number {k} for this choice" for k in range(20))
    panel.on_event(TrainEvent("start", 0, 160, message=f"training on 8 images; profile cpu-fast: {long}"))
    qtbot.waitUntil(lambda: panel.profile_area.verticalScrollBar().maximum() > 0)
    lab = panel.profile
    assert lab.height() >= lab.heightForWidth(lab.width()) > panel.profile_area.viewport().height()
    panel.on_event(TrainEvent("step", 3, 500, losses={"loss": 2.0}, metrics={"eta_s": 141.6}))
    assert bar.text() == "step 3  ETA ~141 s (time budget)"  # the budget has not fitted the steps yet
    panel.on_event(TrainEvent("step", 7, 160, losses={"loss": 1.5}))
    assert bar.text().startswith("step 7/160  ETA ")
