"""The app keeps working through out-of-memory, a dying training process, worker errors,
unreadable images and odd settings."""

import pytest
from PySide6.QtCore import QSettings

from app.main_window import MainWindow
from dataclasses import replace

from detector.train_config import TrainConfig
from detector.domain import ImageStatus
from detector.inference import Predictor
from detector.store import Project
from test_faults import _bad_images


@pytest.fixture
def window_with_model(qtbot, trained_model, tmp_path):
    from detector.synthetic import generate

    _, _, ckpt, _, _ = trained_model
    generate(tmp_path / "f", n_images=3, seed=5, size=(128, 96))
    p = Project(tmp_path / "f")
    p.scan()
    p.add_model("small", str(ckpt), {}, {}, 4, activate=True)
    w = MainWindow()
    qtbot.addWidget(w)
    w.set_project(p)
    qtbot.waitUntil(lambda: w.model_side.info is not None, timeout=30_000)
    yield w, p
    w.models.cancel()
    qtbot.waitUntil(lambda: w.model_side.batch_request < 0, timeout=30_000)
    w.close()


def test_out_of_memory_in_inference_is_reported_and_the_app_goes_on(qtbot, window_with_model, monkeypatch):
    w, p = window_with_model
    real = Predictor.forward

    def oom(self, arrays):
        raise RuntimeError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(Predictor, "forward", oom)
    # Waiting on what the window shows, not on the worker's signal: pytest-qt's waitSignal
    # stops its timer from the emitting thread (Qt warns "Timers cannot be stopped from another
    # thread"; pytest-dev/pytest-qt#649).
    w.models.predict_all()
    qtbot.waitUntil(lambda: w.model_side.batch_request < 0, timeout=20_000)
    shown = w.statusBar().currentMessage()
    assert "ran out of memory" in shown and "lower the batch size" in shown
    monkeypatch.setattr(Predictor, "forward", real)
    w.models.predict_all()
    qtbot.waitUntil(lambda: w.model_side.batch_request < 0 and p.status_counts()[ImageStatus.NEW] == 0, timeout=60_000)


def test_worker_can_be_restarted(qtbot, window_with_model):
    w, p = window_with_model
    old = w.model_side.thread
    w.acts.restart_worker.trigger()
    assert not old.thread.isRunning() and w.model_side.thread is not old
    qtbot.waitUntil(lambda: w.model_side.info is not None, timeout=30_000)
    w.models.predict_all()
    qtbot.waitUntil(lambda: w.model_side.batch_request < 0 and p.status_counts()[ImageStatus.NEW] == 0, timeout=60_000)


def test_training_process_that_dies_is_reported_and_can_restart(qtbot, tmp_path):
    from conftest import labelled

    p, _ = labelled(tmp_path / "f", n=3)
    w = MainWindow(p)
    qtbot.addWidget(w)
    w.training.config = TrainConfig(iterations=500, batch_size=1, min_size=96, weights="none",
                                     backbone="resnet18", augment=False)
    w.acts.train.trigger()
    qtbot.waitUntil(lambda: w.training.panel.chart.series.get("loss") is not None, timeout=120_000)
    with qtbot.waitSignal(w.training.runner.finished, timeout=30_000) as fin:
        w.training.runner.proc.kill()  # as if the process crashed
    assert not fin.args[0]["ok"] and "stopped unexpectedly" in fin.args[0]["message"]
    assert "stopped unexpectedly" in w.statusBar().currentMessage()
    assert w.acts.train.isEnabled() and p.models() == []
    w.training.config = replace(w.training.config, iterations=2)
    with qtbot.waitSignal(w.training.runner.finished, timeout=120_000) as fin:
        w.acts.train.trigger()
    assert fin.args[0]["ok"], fin.args[0]["message"]
    w.close()


def test_unreadable_images_are_flagged_in_the_list_and_skipped(qtbot, tmp_path):
    expect = _bad_images(tmp_path / "f")
    p = Project(tmp_path / "f")
    w = MainWindow()
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.scanned, timeout=30_000):  # a new project: the folder is read off the GUI thread
        w.set_project(p)
    for rec in p.images():
        w.show_image(rec.id)
        qtbot.waitUntil(lambda r=rec: w.loader.latest_request and (
            p.image(r.id).status is ImageStatus.UNREADABLE or w.canvas.image_size != (0, 0)), timeout=5000)
    qtbot.waitUntil(lambda: sum(r.status is ImageStatus.UNREADABLE for r in p.images())
                    == sum(v is not None for v in expect.values()), timeout=10_000)
    bad = {r.path: r.reason for r in p.images() if r.status is ImageStatus.UNREADABLE}
    assert set(bad) == {k for k, v in expect.items() if v}
    assert all(expect[k] in v for k, v in bad.items())
    w.close()


def test_odd_settings_are_ignored_not_misread(qtbot, tmp_path):
    from detector.synthetic import generate

    generate(tmp_path / "f", n_images=1, size=(64, 48))
    QSettings().setValue("recent_folders", 12345)
    w = MainWindow(Project(tmp_path / "f"))
    qtbot.addWidget(w)
    assert [a.text() for a in w.acts.recent_menu.actions()] == [str((tmp_path / "f").resolve())]
    w.close()


def test_cancel_pressed_while_a_batch_waits_in_the_queue_stops_it(trained_model, tmp_path):
    """Cancel is by request id: a batch still queued behind other work when Cancel is pressed
    predicts nothing; the next request runs as usual."""
    from app.workers import InferenceWorker
    from detector.synthetic import generate

    _, _, ckpt, _, _ = trained_model
    generate(tmp_path / "f", n_images=2, seed=5, size=(128, 96))
    with Project(tmp_path / "f") as p:
        p.scan()
        ids = [r.id for r in p.images()]
    worker = InferenceWorker(str(tmp_path / "f"), None, "cpu")
    done = []
    worker.finished.connect(done.append)
    worker.load_model(str(ckpt))
    assert worker.predictor is not None
    worker.cancel(7)  # pressed while request 7 is still in the worker's queue
    worker.predict(7, ids)
    with Project(tmp_path / "f") as p:
        assert p.status_counts()[ImageStatus.NEW] == 2
    worker.predict(8, ids)
    worker.close()
    assert done == [7, 8]
    with Project(tmp_path / "f") as p:
        assert p.status_counts()[ImageStatus.NEW] == 0


@pytest.mark.slow
def test_quitting_while_the_model_side_still_starts_waits_for_it_instead_of_aborting(qtbot, tmp_path, monkeypatch):
    """The worker's first ``import torch`` cannot be cut short and takes 7-15 s on a busy 2-core
    laptop; a window closed meanwhile destroyed its running QThread after 10 s of waiting, which
    aborts the process (exit status 134: the GUI smoke caught it under load)."""
    import threading
    import time

    import app.workers as workers
    from detector.synthetic import generate

    started, slow = threading.Event(), 10.5
    monkeypatch.setattr(workers, "settle_imports", lambda: (started.set(), time.sleep(slow)))
    generate(tmp_path / "f", n_images=2, seed=5, size=(128, 96))
    p = Project(tmp_path / "f")
    p.scan()
    w = MainWindow()
    qtbot.addWidget(w)
    w.set_project(p)
    wt = w.model_side.thread
    visible_while_waiting = []
    stop = workers.WorkerThread.stop
    monkeypatch.setattr(workers.WorkerThread, "stop",
                        lambda self: (visible_while_waiting.append(w.isVisible()), stop(self)))
    w.show()
    assert started.wait(10)
    t = time.perf_counter()
    w.close()
    assert wt.thread.isFinished() and time.perf_counter() - t > slow / 2  # it did wait for the import
    assert visible_while_waiting == [False]  # the window left the screen first
