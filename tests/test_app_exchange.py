"""File > Import COCO… / Export COCO… in the real window: off the GUI thread, all or nothing,
and the exported file reads back in pycocotools."""

import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO
from PySide6.QtWidgets import QFileDialog

from detector.domain import ImageStatus


@pytest.fixture
def window(open_window, project):
    return open_window(project)


def test_import_from_the_menu_shows_everything(qtbot, window, project, demo, monkeypatch):
    _, gt = demo
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(gt), "COCO JSON (*.json)"))
    assert window.canvas.items_by_id == {}
    with qtbot.waitSignal(window.exchange.finished, timeout=30_000) as sig:
        window.acts.import_file.trigger()
    n_ann = len(json.loads(gt.read_text())["annotations"])
    assert f"imported {n_ann} annotations" in sig.args[0]
    assert project.instance_count() == n_ann
    assert [c.name for c in window.editor.categories.values()] == ["circle", "square", "triangle", "kite"]
    assert window.categories.panel.list.count() == 4
    first = project.images()[0]
    assert len(window.canvas.items_by_id) == len(project.instances(first.id)) > 0
    row = window.image_list.model.records
    assert all(r.status is ImageStatus.REVIEWED for r in row)


def test_bad_file_is_refused_whole_with_its_name(qtbot, window, project, tmp_path, monkeypatch):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [], "annotations": [}')
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(bad), ""))
    with qtbot.waitSignal(window.exchange.failed, timeout=30_000) as sig:
        window.acts.import_file.trigger()
    assert "broken.json" in sig.args[0]
    assert "broken.json" in window.statusBar().currentMessage()
    assert project.instance_count() == 0 and project.categories() == []


@pytest.mark.parametrize("polygons", [False, True])
def test_export_from_the_menu_reads_back_in_pycocotools(qtbot, window, project, demo, tmp_path,
                                                        monkeypatch, polygons):
    from detector.coco import import_coco

    _, gt = demo
    import_coco(project, gt)
    out = tmp_path / "out.json"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), ""))
    action = window.acts.export_polygons if polygons else window.acts.export
    with qtbot.waitSignal(window.exchange.finished, timeout=60_000) as sig:
        action.trigger()
    assert "out.json" in sig.args[0]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out))
    src = json.loads(gt.read_text())
    assert len(coco.getAnnIds()) == len(src["annotations"])
    assert len(coco.getImgIds()) == len(src["images"])
    kinds = {type(a["segmentation"]) for a in coco.dataset["annotations"]}
    assert kinds == ({list} if polygons else {dict})


def test_file_menu_exports_yolo_and_imports_it_into_another_window(qtbot, open_window, project, demo, tmp_path,
                                                                   monkeypatch):
    import shutil

    from detector.coco import import_coco
    from detector.store import Project

    folder, gt = demo
    import_coco(project, gt)
    w = open_window(project)
    out = tmp_path / "yolo"
    out.mkdir()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(out))
    with qtbot.waitSignal(w.exchange.finished, timeout=30_000) as sig:
        w.acts.export_as["yolo"].trigger()
    assert "YOLO pose" in sig.args[0] and (out / "data.yaml").exists()
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".loupe", "ground_truth.json"))
    other = Project(copy)
    w2 = open_window(other)
    with qtbot.waitSignal(w2.exchange.finished, timeout=30_000) as sig:
        w2.acts.import_folder["yolo"].trigger()
    assert "imported" in sig.args[0]
    assert other.instance_count() == project.instance_count()
    assert len(w2.canvas.items_by_id) > 0  # shown at once
