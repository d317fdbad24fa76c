"""The inference worker: the model lives on its own QThread and never runs on the GUI thread.

Requests go in as queued signals; answers come back as plain dataclasses carrying the request id,
so the view can drop answers to requests a newer one replaced. Exceptions become ``errored``.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QThread, Signal, Slot

from detector.domain import Prediction
from detector.store import Project

# torch and torchvision (through detector.inference) are imported by the worker, on its own
# thread: the window and the first image appear before them (about 4 s and 1 GB on a laptop CPU).
if TYPE_CHECKING:
    from detector.inference import Predictor


def settle_imports() -> None:
    """Once torch and torchvision are in: move every object that exists now out of the garbage
    collector's reach (``gc.freeze``). The import leaves some hundreds of thousands of long-lived
    objects; each full collection walked them all while holding the GIL, and a collection set off
    by a 100,000-image list stalled the GUI thread for ~330 ms (160 ms after this; bench/RESULTS.md).
    Only what exists now is frozen (the image list freezes its records as they stream in,
    app/folder.py). Idempotent."""
    global _SETTLED
    if not _SETTLED:
        _SETTLED = True
        gc.freeze()


_SETTLED = False


@dataclass(frozen=True)
class ModelInfo:
    name: str
    device: str
    notice: str
    fill: str = ""  # how the Box tool fills boxes with this model, where its held-out images said so


@dataclass(frozen=True)
class Progress:
    request_id: int
    done: int
    total: int
    eta_s: float


class InferenceWorker(QObject):
    warmed = Signal(str)  # the model side is imported; the device it will use
    model_ready = Signal(object)  # ModelInfo
    prediction = Signal(object)  # Prediction (already stored in the project)
    progress = Signal(object)  # Progress
    finished = Signal(int)  # request id
    errored = Signal(str)

    def __init__(self, folder: str, db_path: str | None, device: str | None = None):
        super().__init__()
        self.folder, self.db_path, self.device = folder, db_path, device
        self.cancel_event = threading.Event()  # set by stop(): everything ends
        self.cancelled_through = 0  # requests with ids up to this one are cancelled
        self._project: Project | None = None
        self.predictor: Predictor | None = None
        self.identity: str | None = None  # the loaded model's (stored with each prediction)

    def _proj(self) -> Project:
        if self._project is None:
            self._project = Project(self.folder, self.db_path)
        return self._project

    @Slot()
    def warm_up(self) -> None:
        """Import the model side (torch, torchvision, the starting-model helpers) off the GUI thread."""
        try:
            from detector import pretrained  # noqa: F401  (the starting-model banner needs it)
            from detector.inference import describe_device, pick_device

            settle_imports()

            self.warmed.emit(describe_device(pick_device(self.device)))
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.report(exc, self.errored)

    @staticmethod
    def report(exc: BaseException, errored) -> None:
        """``exc`` as one line on ``errored`` (a GPU out of memory said as such)."""
        try:
            from detector.inference import is_out_of_memory
        except Exception:  # the model side itself failed to import: say so as it is
            def is_out_of_memory(_exc):
                return False
        if is_out_of_memory(exc):
            errored.emit("The GPU ran out of memory during inference: lower the batch size or "
                         "close other GPU programs. The app keeps working.")
        else:
            errored.emit(str(exc) or type(exc).__name__)

    @Slot(str)
    def load_model(self, weights: str) -> None:
        try:
            from detector.inference import Predictor, load_detector, model_identity

            self.warm_up()
            from detector.versions import fill_note, fill_uses_model, version_for

            det = load_detector(self._proj(), weights or None)
            self.predictor = Predictor(det, self.device)
            version = version_for(self._proj(), weights)  # None for a COCO start or another file
            metrics = version.metrics if version else None
            self.predictor.model_masks = fill_uses_model(metrics)
            self.identity = model_identity(self._proj(), weights or None)
            self.model_ready.emit(ModelInfo(weights, self.predictor.describe(), det.notice,
                                            fill_note(metrics)))
        except Exception as exc:  # reported, never a silent thread death
            self.predictor = None
            self._fail(exc)

    @Slot(int, list)
    def predict(self, request_id: int, image_ids: list) -> None:
        """Predict and store the given images in order; cancellable between batches."""
        if self.predictor is None:
            self.errored.emit("No model loaded yet.")
            self.finished.emit(request_id)
            return
        project = self._proj()
        cancel = _Cancelled(self, request_id)
        t0, done = time.perf_counter(), 0
        try:
            items = [(i, project.abspath(project.image(i))) for i in image_ids]
            from detector.inference import store_predictions

            answers = self.predictor.predict_items(items, request_id=request_id, cancel=cancel)
            for pred in store_predictions(project, answers, self.identity):
                self.prediction.emit(pred)
                done += 1
                rate = done / max(1e-6, time.perf_counter() - t0)
                self.progress.emit(Progress(request_id, done, len(items), (len(items) - done) / rate))
        except Exception as exc:
            self._fail(exc)
        self.finished.emit(request_id)

    def cancel(self, through_request: int) -> None:
        """Cancel requests up to ``through_request``, also those still queued (any thread)."""
        self.cancelled_through = max(self.cancelled_through, through_request)

    @Slot()
    def close(self) -> None:
        if self._project is not None:
            self._project.close()
            self._project = None


class FillWorker(QObject):
    """The person's own requests, Box tool fills and Click tool regions, on a thread of their own,
    so that they never wait behind a pre-annotation batch (one slot call on the inference thread:
    re-annotating a folder after training took minutes there, and every box and click waited for
    it). The model is the inference worker's, read as each request arrives (forward passes in
    inference mode share it safely); the project has a connection of its own on this thread."""

    box_filled = Signal(object)  # Prediction with the instances for a person's boxes
    clicks_filled = Signal(object)  # Prediction with the instances for a person's clicks
    errored = Signal(str)

    def __init__(self, source: InferenceWorker):
        super().__init__()
        self.source = source
        self._project: Project | None = None

    def _proj(self) -> Project:
        if self._project is None:
            self._project = Project(self.source.folder, self.source.db_path)
        return self._project

    @Slot(int, int, list, list, list)
    def fill_boxes(self, request_id: int, image_id: int, boxes: list, category_ids: list,
                   instance_ids: list) -> None:
        """Masks (and keypoints) for a person's boxes: the model's second stage where it knows the
        category, else (and before any model) a classical cut (``detector.fills.fill_boxes``);
        each answer carries the id of the instance it fills."""
        try:
            from detector.fills import fill_boxes  # no torch: none needed before a model is loaded
            from detector.images import load_image

            project = self._proj()
            rec = project.image(image_id)
            arr = load_image(project.abspath(rec))
            insts = tuple(inst.with_(id=iid) for inst, iid
                          in zip(fill_boxes(self.source.predictor, arr, boxes, category_ids), instance_ids))
            self.box_filled.emit(Prediction(request_id, image_id, rec.path, arr.shape[1], arr.shape[0], insts))
        except Exception as exc:
            self.source.report(exc, self.errored)

    @Slot(int, int, list, list, list)
    def fill_clicks(self, request_id: int, image_id: int, points: list, category_ids: list,
                    insides: list | None = None) -> None:
        """Instances grown from a person's clicks (``detector.fills.fill_clicks``); the clicks
        that found nothing are counted in ``extra["missed"]``. A click with an instance in
        ``insides`` (None for the others) cuts that instance in two instead
        (``detector.fills.split_click``): ``extra["splits"]`` lists (the instance as clicked, its
        rest, the new one), ``extra["unsplit"]`` the instances that held one object only."""
        try:
            from detector.fills import fill_clicks, split_click
            from detector.images import load_image

            project = self._proj()
            rec = project.image(image_id)
            arr = load_image(project.abspath(rec))
            insides = list(insides or []) + [None] * (len(points) - len(insides or []))
            grow = [k for k, inside in enumerate(insides) if inside is None]
            found = fill_clicks(self.source.predictor, arr, [points[k] for k in grow], [category_ids[k] for k in grow])
            insts = tuple(i for i in found if i is not None)
            splits, unsplit = [], []
            for p, cid, inside in zip(points, category_ids, insides):
                if inside is not None:
                    cut = split_click(self.source.predictor, arr, inside, p, cid)
                    (unsplit if cut is None else splits).append(inside if cut is None else (inside, *cut))
            self.clicks_filled.emit(Prediction(request_id, image_id, rec.path, arr.shape[1], arr.shape[0], insts,
                                               extra={"missed": len(found) - len(insts), "splits": splits,
                                                      "unsplit": unsplit}))
        except Exception as exc:
            self.source.report(exc, self.errored)

    @Slot()
    def close(self) -> None:
        if self._project is not None:
            self._project.close()
            self._project = None


class _Cancelled:
    """``is_set()`` for one request: the worker stopped, or that request cancelled. A request id,
    not a shared event that the next request clears, so a Cancel pressed while the batch waits
    in the queue is not lost."""

    def __init__(self, worker: InferenceWorker, request_id: int):
        self.worker, self.request_id = worker, request_id

    def is_set(self) -> bool:
        return self.worker.cancel_event.is_set() or self.request_id <= self.worker.cancelled_through


class WorkerThread(QObject):
    """Owns the worker threads: the inference worker's and its ``FillWorker``'s; ``stop()`` cancels
    work and joins both."""

    def __init__(self, worker: InferenceWorker, parent=None):
        super().__init__(parent)
        self.worker = worker
        self.fill = FillWorker(worker)
        self.thread = self._started(worker, "loupe-inference", parent)
        self.fill_thread = self._started(self.fill, "loupe-fill", parent)

    @staticmethod
    def _started(worker: QObject, name: str, parent) -> QThread:
        thread = QThread(parent)
        thread.setObjectName(name)
        worker.moveToThread(thread)
        thread.finished.connect(worker.deleteLater)
        thread.start()
        return thread

    def stop(self) -> None:
        """Cancel running work and join the thread. Model work stops between batches; what cannot
        be cut short (the worker's first ``import torch``, ~7-15 s on a busy 2-core laptop) is waited
        for: a QThread destroyed while it runs aborts the process (quitting in the first seconds
        after launch did, exit status 134)."""
        self.worker.cancel_event.set()
        for thread in (self.thread, self.fill_thread):
            thread.quit()
        for thread in (self.thread, self.fill_thread):
            thread.wait()
        self.worker.close()
        self.fill.close()
