"""The starting-model offer in the real window: COCO weights from the cache (a file the test
makes), the class-mapping dialog driven by hand, pre-annotation through the mapping; and what
the window says without the file, or with a bad one."""

import pytest
import torch
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication, QDialog

from app.pretrained import MappingDialog
from detector import pretrained as P
from detector.domain import Category, ImageStatus
from detector.model import ModelConfig, _architecture
from detector.store import Project
from detector.synthetic import generate

from conftest import in_torch_cache


@pytest.fixture
def coco_cache(tmp_path, monkeypatch):
    torch.manual_seed(1)
    return in_torch_cache(monkeypatch, tmp_path, _architecture(91, 0, ModelConfig()).state_dict(), P.cache_path)


@pytest.fixture
def fresh(tmp_path):
    folder = tmp_path / "photos"
    generate(folder, n_images=2, seed=4, size=(96, 72))
    (folder / "ground_truth.json").unlink()
    p = Project(folder)
    p.scan()
    p.ensure_category(Category("Person"))
    yield p
    p.close()


def _drive_mapping_dialog(choices: dict[str, str]):
    """When the modal mapping dialog opens, pick ``choices`` (COCO class -> combo text) and press OK."""
    def act():
        dlg = next((w for w in QApplication.topLevelWidgets() if isinstance(w, MappingDialog) and w.isVisible()),
                   None)
        if dlg is None:
            QTimer.singleShot(50, act)
            return
        assert dlg.combos["person"].currentData() == "Person"  # matched by name
        for name, text in choices.items():
            combo = dlg.combos[name]
            combo.setCurrentIndex(combo.findText(text))
        dlg.ok.click()
    QTimer.singleShot(50, act)


def test_coco_start_through_the_mapping_pre_annotates_mapped_classes_only(open_window, qtbot, fresh, coco_cache):
    w = open_window(fresh)
    qtbot.waitUntil(lambda: w.starting.ready, timeout=60_000)  # torch comes up on the worker's thread
    banner = w.starting
    assert banner.banner.isVisibleTo(w) and banner.use_button.isVisibleTo(w)
    assert not banner.download_button.isVisibleTo(w)
    _drive_mapping_dialog({"dog": "new category “dog”"})
    banner.use_button.click()
    qtbot.waitUntil(lambda: fresh.active_model() is not None, timeout=60_000)
    qtbot.waitUntil(lambda: not w.model_side.busy and all(r.status is not ImageStatus.NEW for r in fresh.images()),
                    timeout=180_000)
    assert not banner.banner.isVisibleTo(w)
    names = {c.id: c.name for c in fresh.categories()}
    assert set(names.values()) == {"Person", "dog"}
    for r in fresh.images():
        assert {names[i.category_id] for i in fresh.instances(r.id)} <= {"Person", "dog"}
    assert P.saved_mapping(fresh) == {"person": "Person", "dog": "dog"}  # used again next time
    # the next time, the dialog opens with the saved mapping
    dlg = MappingDialog([c.name for c in fresh.categories()], P.saved_mapping(fresh))
    qtbot.addWidget(dlg)
    assert dlg.combos["dog"].currentData() == "dog" and dlg.combos["cat"].currentData() == ""
    dlg.map_all_new()
    assert len(dlg.mapping()) == 80 and dlg.mapping()["person"] == "Person"


def test_without_the_file_the_banner_offers_the_download_and_says_where(open_window, qtbot, fresh, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    w = open_window(fresh)
    qtbot.waitUntil(lambda: w.starting.ready, timeout=60_000)  # torch comes up on the worker's thread
    s = w.starting
    assert s.download_button.isVisibleTo(w) and not s.use_button.isVisibleTo(w)
    assert P.cache_path().name in s.text.text() and str(P.cache_path().parent) in s.text.text()
    assert "download.pytorch.org" in s.text.toolTip() and str(P.cache_path()) in s.text.toolTip()


def test_a_bad_weights_file_is_refused_by_name(open_window, qtbot, fresh, tmp_path):
    w = open_window(fresh)
    qtbot.waitUntil(lambda: w.starting.ready, timeout=60_000)  # torch comes up on the worker's thread
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"\x80\x04 truncated")
    w.starting.load_weights(str(bad))
    qtbot.waitUntil(lambda: w.starting.load_button.isEnabled(), timeout=10_000)
    assert "broken.pth" in w.starting.text.text() and "refused" in w.starting.text.text()
    assert fresh.active_model() is None


def test_a_loupe_checkpoint_becomes_the_active_model(open_window, qtbot, fresh, tmp_path):
    from detector.model import build_model, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "mine.pt", build_model(
        categories=[Category("Person")], weights="none",
        config=ModelConfig(backbone="resnet18", min_size=64, max_size=96, box_detections_per_img=5)))
    w = open_window(fresh)
    qtbot.waitUntil(lambda: w.starting.ready, timeout=60_000)  # torch comes up on the worker's thread
    w.starting.load_weights(str(ckpt))
    qtbot.waitUntil(lambda: fresh.active_model() is not None, timeout=20_000)
    qtbot.waitUntil(lambda: w.model_side.info is not None, timeout=60_000)
    assert not w.starting.banner.isVisibleTo(w)
    assert not [d for d in QApplication.topLevelWidgets() if isinstance(d, QDialog) and d.isVisible()]
    # it pre-annotates the images at once
    qtbot.waitUntil(lambda: not w.model_side.busy and all(r.status is not ImageStatus.NEW for r in fresh.images()),
                    timeout=120_000)


def test_a_model_prepared_for_a_folder_left_meanwhile_stays_with_that_folder(open_window, qtbot, fresh, tmp_path,
                                                                             monkeypatch):
    """Another folder opened while a loaded file is still being copied in: the model is registered
    with the folder it was loaded for (nothing lost) and the open folder neither takes it nor
    pre-annotates with it; its own offer shows."""
    import threading

    from app import pretrained as app_pretrained
    from detector.model import build_model, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "mine.pt", build_model(
        categories=[Category("Person")], weights="none",
        config=ModelConfig(backbone="resnet18", min_size=64, max_size=96, box_detections_per_img=5)))
    other_folder = tmp_path / "other"
    generate(other_folder, n_images=2, seed=5, size=(96, 72))
    other = Project(other_folder)
    other.scan()
    copying, go = threading.Event(), threading.Event()
    copy = app_pretrained.shutil.copyfile

    def slow_copy(src, dst):
        copying.set()
        go.wait(20)
        return copy(src, dst)

    monkeypatch.setattr(app_pretrained.shutil, "copyfile", slow_copy)
    w = open_window(fresh)
    qtbot.waitUntil(lambda: w.starting.ready, timeout=60_000)  # torch comes up on the worker's thread
    handed = []
    w.starting.added.connect(handed.append)  # what the window would load and pre-annotate with
    w.starting.load_weights(str(ckpt))
    assert copying.wait(20)
    with qtbot.waitSignal(w.image_shown, timeout=10_000):
        w.set_project(other)  # the person opens another folder meanwhile
    go.set()
    # the job's answer has reached the window once its buttons are enabled again (the same call)
    qtbot.waitUntil(lambda: not w.starting.jobs.running and w.starting.load_button.isEnabled(), timeout=20_000)
    assert handed == []
    with Project(fresh.root) as first:
        assert first.active_model() is not None and "mine" in first.active_model().name
    assert other.active_model() is None and w.model_side.info is None
    assert w.starting.banner.isVisibleTo(w)
    assert all(r.status is ImageStatus.NEW for r in other.images())
