import os
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Hermetic weights: nothing is downloaded, and torchvision's cache is an empty folder of the
# suite's own (tests that want COCO or ImageNet files write them there), whatever this machine has.
os.environ["LOUPE_OFFLINE"] = "1"
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="loupe-test-torch-")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def modal_answers(monkeypatch):
    """A modal message box in an offscreen test would wait forever for a click: answer it the
    way a person who wants to go on would (Yes / Ok) and keep what was asked, so a test can
    assert on it and a hang becomes a visible record instead."""
    from PySide6.QtWidgets import QMessageBox

    asked: list[tuple[str, str, str]] = []

    def answer(kind, reply):
        def ask(parent, title, text, *args, **kwargs):
            asked.append((kind, title, text))
            return reply
        return ask

    monkeypatch.setattr(QMessageBox, "question", answer("question", QMessageBox.StandardButton.Yes))
    for kind in ("information", "warning", "critical"):
        monkeypatch.setattr(QMessageBox, kind, answer(kind, QMessageBox.StandardButton.Ok))
    return asked


@pytest.fixture
def demo(tmp_path):
    """A small synthetic folder and its ground-truth COCO file."""
    from detector.synthetic import generate

    folder = tmp_path / "shapes"
    gt = generate(folder, n_images=6, seed=3, size=(128, 96))
    return folder, gt


@pytest.fixture
def one_instance(tmp_path):
    """``one_instance(rgb, mask, name)``: a folder of one image holding one instance (``mask``) of
    a new category ``name``; returns (project, category, image record, instance), closed after."""
    from PIL import Image

    from detector import masks as M
    from detector.domain import Category, Instance
    from detector.store import Project

    opened = []

    def make(rgb, mask, name):
        folder = tmp_path / "one"
        folder.mkdir()
        Image.fromarray(rgb).save(folder / "image.png")
        p = Project(folder)
        opened.append(p)
        p.scan()
        cat = p.add_category(Category(name, "#e6194b"))
        (rec,) = p.images()
        rle = M.encode(mask)
        return p, cat, rec, p.add_instance(Instance(cat.id, M.bbox_xyxy(rle), rle, image_id=rec.id))

    yield make
    for p in opened:
        p.close()


@pytest.fixture
def project(demo):
    from detector.store import Project

    folder, _ = demo
    p = Project(folder)
    p.scan()
    yield p
    p.close()


@pytest.fixture
def open_window(qtbot):
    """``open_window(project)``: the real MainWindow on ``project``, its first image shown."""
    from app.main_window import MainWindow

    opened = []

    def open_(project):
        w = MainWindow()
        qtbot.addWidget(w)
        with qtbot.waitSignal(w.image_shown, timeout=10_000):
            w.set_project(project)
        opened.append(w)
        return w

    yield open_
    for w in opened:
        w.close()


FAST = dict(rpn_batch_size_per_image=64, box_batch_size_per_image=64,
            anchor_sizes=(8, 16, 32, 64, 128), box_detections_per_img=20)


def in_torch_cache(monkeypatch, tmp_path, state_dict, path_of):
    """``state_dict`` saved at ``path_of()`` (a torchvision file name in its cache) under a fresh
    TORCH_HOME, with the file's hash registered as the one its name carries; returns the path."""
    import hashlib

    import torch

    from detector import pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = path_of()
    path.parent.mkdir(parents=True)
    torch.save(state_dict, path)
    monkeypatch.setitem(pretrained.KNOWN_HASHES, path.name, hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    return path


def small_train_config(**kw):
    """Light backbone, small images, few sampled RoIs: about 0.8 s a step on 2 CPU cores."""
    from detector.training import TrainConfig

    base = dict(weights="none", backbone="resnet18", iterations=60, batch_size=2,
                min_size=96, max_size=128, holdout=0.0, augment=False, warmup_steps=5,
                model_overrides=FAST)
    base.update(kw)
    return TrainConfig(**base)


def labelled(folder, n=4, seed=5):
    """A synthetic folder whose images are all reviewed with their ground truth."""
    from detector.coco import import_coco
    from detector.store import Project
    from detector.synthetic import generate

    gt = generate(folder, n_images=n, seed=seed, size=(128, 96))
    p = Project(folder)
    p.scan()
    import_coco(p, gt)
    return p, gt


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """One small model overfitted on 4 images, shared by the tests (about a minute, once). Under
    pytest-xdist the first worker that needs it trains it and the others wait for it; each worker
    gets a copy of the folder, whose project store its tests write to."""
    import json
    import shutil

    from filelock import FileLock

    from detector.train_config import TrainEvent, TrainResult
    from detector.training import train_project

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    run = tmp_path_factory.getbasetemp()
    run = run.parent if worker else run  # under xdist: this run's, shared by its workers
    built = run / "trained_model"
    with FileLock(str(run / "trained_model.lock")):
        if not (built / "run.json").exists():
            p, _ = labelled(built / "shapes")
            events = []
            result = train_project(p, small_train_config(), built / "model.pt", on_event=events.append)
            p.close()
            (built / "run.json").write_text(json.dumps({"events": [e.to_json() for e in events],
                                                        "result": result.summary()}))
    mine = built
    if worker:
        mine = tmp_path_factory.mktemp("train")
        shutil.copytree(built / "shapes", mine / "shapes")
        shutil.copy(built / "model.pt", mine / "model.pt")
    run_json = json.loads((built / "run.json").read_text())
    result = TrainResult(**{**run_json["result"], "checkpoint": str(mine / "model.pt")})
    events = [TrainEvent.from_json(x) for x in run_json["events"]]
    return mine / "shapes", mine / "shapes" / "ground_truth.json", mine / "model.pt", events, result
