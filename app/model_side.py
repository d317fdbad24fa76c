"""The model side of the window: the inference worker on its own thread, the requests sent to it
and what comes back, as plain signals the window routes to its widgets.

Pre-annotation runs on the worker's thread, the person's box fills and clicks on a second one
(``workers.FillWorker``), so they are answered while a batch runs.

The window asks (``start``, ``load``, ``predict_image``, ``predict_all``, ``fill``, ``fill_clicks``,
``cancel``) and listens (``ready``, ``predicted``, ``filled``, ``clicked``, ``batch_progress``,
``batch_done``, ``state``, ``message``); torch is imported on the worker's thread, never here.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

from detector.domain import ImageStatus
from detector.store import Project

from .workers import InferenceWorker, ModelInfo, Progress, WorkerThread


class ModelSide(QObject):
    ready = Signal(object)  # ModelInfo: a model is loaded and answers requests
    warmed = Signal(str)  # torch is in (device name), no model loaded
    predicted = Signal(object)  # Prediction, already stored
    filled = Signal(object)  # Prediction answering a box fill
    clicked = Signal(object)  # Prediction answering the Click tool's clicks
    batch_started = Signal(int)  # images in the batch
    batch_progress = Signal(int, float)  # done, ETA seconds
    batch_done = Signal(str)  # "" or the error that stopped it
    state = Signal(str)  # one line for the status bar's model label
    message = Signal(str, int)  # status-bar text, milliseconds
    # Requests to the worker (queued: it lives on its own thread).
    request_load = Signal(str)
    request_warm = Signal()
    request_predict = Signal(int, list)
    request_fill = Signal(int, int, list, list, list)
    request_click = Signal(int, int, list, list, list)

    def __init__(self, project: Callable[[], Project | None], parent=None):
        super().__init__(parent)
        self._project = project
        self.thread: WorkerThread | None = None
        self.info: ModelInfo | None = None
        self._next_request = 0
        self.batch_request = -1
        self._batch_error = ""  # the worker's error during the running batch, shown when it ends
        self._asked: set[int] = set()

    @property
    def busy(self) -> bool:
        """A pre-annotation batch is running."""
        return self.batch_request >= 0

    def start(self) -> None:
        """A fresh worker for the open project; it loads the active model, or just imports torch."""
        self.stop()
        project = self._project()
        assert project is not None
        worker = InferenceWorker(str(project.root), str(project.db_path))
        self.thread = WorkerThread(worker, self)
        self.request_load.connect(worker.load_model)
        self.request_warm.connect(worker.warm_up)
        self.request_predict.connect(worker.predict)
        self.request_fill.connect(self.thread.fill.fill_boxes)  # never behind a batch: own thread
        self.request_click.connect(self.thread.fill.fill_clicks)
        worker.model_ready.connect(self._on_model_ready)
        worker.warmed.connect(self.warmed)
        worker.prediction.connect(self.predicted)
        self.thread.fill.box_filled.connect(self.filled)
        self.thread.fill.clicks_filled.connect(self.clicked)
        self.thread.fill.errored.connect(lambda m: self.message.emit(m, 15000))
        worker.progress.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        worker.errored.connect(self._on_error)
        self.info = None
        active = project.active_model()
        if active is None:
            self.state.emit("starting the model side (torch)…")
            self.request_warm.emit()
        else:
            self.state.emit(f"loading model {active.name}…")
            self.request_load.emit(active.path)  # imports torch on the worker's thread

    def stop(self) -> None:
        if self.thread is not None:
            wt, self.thread = self.thread, None
            for sig in (self.request_load, self.request_warm, self.request_predict, self.request_fill,
                        self.request_click):
                try:
                    sig.disconnect()
                except (RuntimeError, TypeError):
                    pass
            wt.stop()
            self.batch_request = -1

    def load(self, weights: str) -> None:
        """Swap the model in the running worker (no restart)."""
        if self.thread is not None:
            self.request_load.emit(weights)

    def _on_model_ready(self, info: ModelInfo) -> None:
        self.info = info
        self._asked.clear()
        self.ready.emit(info)

    def predict_image(self, image_id: int) -> None:
        """Opening an image asks for its prediction first (once per model, new images only)."""
        project = self._project()
        if self.info is None or project is None or image_id in self._asked:
            return
        if project.image(image_id).status is not ImageStatus.NEW:
            return
        self._asked.add(image_id)
        self._next_request += 1
        self.request_predict.emit(self._next_request, [image_id])

    def fill(self, image_id: int, boxes: list, category_ids: list, instance_ids: list) -> bool:
        """Ask the worker to fill the person's boxes (instances ``instance_ids``) with masks (the
        model's, or a classical cut before there is one); the answer's instances carry those ids.
        False when no project is open."""
        if self.thread is None:
            return False
        self._next_request += 1
        self.request_fill.emit(self._next_request, image_id, boxes, category_ids, instance_ids)
        return True

    def fill_clicks(self, image_id: int, points: list, category_ids: list, insides: list | None = None) -> bool:
        """Ask the worker for the objects at the person's clicks (``clicked`` answers), a click
        with an instance in ``insides`` splitting it; False when no project is open."""
        if self.thread is None:
            return False
        self._next_request += 1
        self.request_click.emit(self._next_request, image_id, points, category_ids,
                                list(insides or [None] * len(points)))
        return True

    def predict_all(self, first: int | None = None) -> bool:
        """Pre-annotate every image not yet reviewed (``first`` at the front); False without a model."""
        project = self._project()
        if self.info is None or project is None:
            return False
        todo = [r.id for r in project.images([ImageStatus.NEW, ImageStatus.PREDICTED])]
        if first in todo:  # the image in front of the person first
            todo.remove(first)
            todo.insert(0, first)
        self._next_request += 1
        self.batch_request = self._next_request
        self._batch_error = ""
        self.batch_started.emit(len(todo))
        self.request_predict.emit(self.batch_request, todo)
        return True

    def cancel(self) -> None:
        """Cancel every request sent so far (the running batch, queued single images)."""
        if self.thread is not None:
            self.thread.worker.cancel(self._next_request)

    def _on_progress(self, p: Progress) -> None:
        if p.request_id == self.batch_request:
            self.batch_progress.emit(p.done, p.eta_s)

    def _on_finished(self, request_id: int) -> None:
        if request_id == self.batch_request:
            self.batch_request = -1
            self.batch_done.emit(self._batch_error)

    def _on_error(self, message: str) -> None:
        self.message.emit(message, 15000)
        if self.batch_request >= 0:
            self._batch_error = message
        if self.info is None:
            self.state.emit("model: failed to load")
