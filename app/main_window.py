"""The main window assembles docks, actions and the canvas; behaviour lives in the widgets."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QAction, QColor, QKeySequence
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QLabel, QListWidget, QListWidgetItem,
                               QMainWindow, QMessageBox, QProgressBar, QSlider, QToolBar,
                               QWidget, QHBoxLayout)

from detector.domain import ImageStatus
from detector.store import Project, ProjectError

from .canvas import ImageCanvas
from .image_list import ImageListWidget
from .loader import ImageLoader, LoadedImage
from .workers import InferenceWorker, ModelInfo, Progress, WorkerThread


class MainWindow(QMainWindow):
    """One project at a time. ``image_shown(image_id)`` fires once an image and its instances show."""

    image_shown = Signal(int)
    predictions_shown = Signal(int)  # image id whose fresh predictions are on screen
    # Requests to the inference worker (queued: it lives on its own thread).
    request_load = Signal(str)
    request_predict = Signal(int, list)
    request_fill = Signal(int, int, list, list)

    def __init__(self, project: Project | None = None):
        super().__init__()
        self.setWindowTitle("Loupe")
        self.resize(1280, 800)
        self.setAcceptDrops(True)
        self.project: Project | None = None
        self.current_image_id: int | None = None
        self.worker_thread: WorkerThread | None = None
        self.model_info: ModelInfo | None = None
        self._next_request = 0
        self._batch_request = -1
        self._asked: set[int] = set()
        self._categories: dict = {}
        self.canvas = ImageCanvas(self)
        self.setCentralWidget(self.canvas)
        self.loader = ImageLoader(self)
        self.loader.loaded.connect(self._on_loaded)

        self.image_list = ImageListWidget()
        self.image_list.image_chosen.connect(self.show_image)
        self._dock("Images", self.image_list, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.instance_list = QListWidget()
        self.instance_list.setSelectionMode(QListWidget.SelectionMode.ExtendedSelection)
        self.instance_list.itemSelectionChanged.connect(self._on_list_selection)
        self.canvas.selection_changed.connect(self._on_canvas_selection)
        self._dock("Instances", self.instance_list, Qt.DockWidgetArea.RightDockWidgetArea)
        self.category_list = QListWidget()
        self._dock("Categories", self.category_list, Qt.DockWidgetArea.RightDockWidgetArea)

        self._build_actions()
        self.device_label = QLabel("model: none")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(220)
        self.progress.setVisible(False)
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(self.device_label)
        if project is not None:
            self.set_project(project)

    # -- construction -----------------------------------------------------------------------
    def _dock(self, title: str, widget: QWidget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    def _action(self, text: str, slot, shortcut=None, tip: str = "") -> QAction:
        act = QAction(text, self)
        if shortcut:
            seqs = shortcut if isinstance(shortcut, list) else [shortcut]
            act.setShortcuts([QKeySequence(s) for s in seqs])
            tip = f"{tip or text} ({', '.join(QKeySequence(s).toString() for s in seqs)})"
        act.setToolTip(tip or text)
        act.triggered.connect(slot)
        return act

    def _build_actions(self) -> None:
        self.act_open = self._action("Open folder…", self.choose_folder, QKeySequence.StandardKey.Open)
        self.act_prev = self._action("Previous", lambda: self.step(-1), ["A", "PgUp"])
        self.act_next = self._action("Next", lambda: self.step(1), ["D", "PgDown"])
        self.act_fit = self._action("Fit", self.canvas.fit, "F")
        self.act_one = self._action("1:1", self.canvas.actual_size, "1")
        self.act_reviewed = self._action("Mark reviewed", self.mark_reviewed, "Space",
                                         "Mark this image reviewed and go to the next")
        self.act_quit = self._action("Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_predict_all = self._action("Pre-annotate all", self.predict_all, "Ctrl+P",
                                            "Pre-annotate every image not yet reviewed")
        self.act_cancel = self._action("Cancel", self.cancel_work, "Esc", "Cancel background work")
        self.act_cancel.setEnabled(False)
        self.addAction(self.act_predict_all)
        self.addAction(self.act_cancel)
        for a in (self.act_prev, self.act_next, self.act_fit, self.act_one, self.act_reviewed):
            self.addAction(a)
        m = self.menuBar().addMenu("&File")
        m.addAction(self.act_open)
        self.recent_menu = m.addMenu("Open recent")
        self._fill_recent()
        m.addSeparator()
        m.addAction(self.act_quit)
        v = self.menuBar().addMenu("&View")
        v.addActions([self.act_fit, self.act_one, self.act_prev, self.act_next])
        tb = QToolBar("Main")
        tb.setObjectName("main toolbar")
        tb.addActions([self.act_open, self.act_prev, self.act_next, self.act_fit, self.act_reviewed])
        tb.addSeparator()
        tb.addActions([self.act_predict_all, self.act_cancel])
        mm = self.menuBar().addMenu("&Model")
        mm.addActions([self.act_predict_all, self.act_cancel])
        tb.addSeparator()
        box = QWidget()
        lay = QHBoxLayout(box)
        lay.setContentsMargins(6, 0, 6, 0)
        lay.addWidget(QLabel("Confidence"))
        self.score_slider = QSlider(Qt.Orientation.Horizontal)
        self.score_slider.setRange(0, 100)
        self.score_slider.setValue(50)
        self.score_slider.setMaximumWidth(160)
        self.score_label = QLabel("0.50")
        self.score_slider.valueChanged.connect(self._on_threshold)
        lay.addWidget(self.score_slider)
        lay.addWidget(self.score_label)
        tb.addWidget(box)
        self.addToolBar(tb)
        self.canvas.min_score = 0.5

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for folder in QSettings().value("recent_folders", [], type=list)[:8]:
            act = self.recent_menu.addAction(folder)
            act.triggered.connect(lambda _=False, f=folder: self.open_folder(f))

    # -- project ----------------------------------------------------------------------------
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of images")
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str, project_path: str | None = None) -> bool:
        try:
            project = Project(folder, project_path)
        except ProjectError as exc:
            QMessageBox.warning(self, "Cannot open folder", str(exc))
            return False
        self.set_project(project)
        return True

    def set_project(self, project: Project) -> None:
        if self.project is not None and self.project is not project:
            self.project.close()
        self.project = project
        project.scan()
        settings = QSettings()
        recent = [str(project.root)] + [f for f in settings.value("recent_folders", [], type=list)
                                        if f != str(project.root)]
        settings.setValue("recent_folders", recent[:8])
        self._fill_recent()
        self.setWindowTitle(f"Loupe — {project.root}")
        self._categories = {c.id: c for c in project.categories()}
        self.category_list.clear()
        for c in self._categories.values():
            item = QListWidgetItem(c.name + (f"  ({len(c.keypoints)} keypoints)" if c.keypoints else ""))
            item.setForeground(Qt.GlobalColor.white)
            item.setBackground(QColor(c.color).darker(160))
            self.category_list.addItem(item)
        records = project.images()
        self.image_list.model.set_records(records)
        counts = project.status_counts()
        self.statusBar().showMessage(
            f"{len(records)} images: " + ", ".join(f"{n} {s.value}" for s, n in counts.items() if n))
        self.start_worker()
        first = next((r for r in records if r.readable), None)
        if first is not None:
            self.show_image(first.id)

    # -- the model worker -------------------------------------------------------------------
    def start_worker(self) -> None:
        self.stop_worker()
        assert self.project is not None
        worker = InferenceWorker(str(self.project.root), str(self.project.db_path))
        self.worker_thread = WorkerThread(worker, self)
        self.request_load.connect(worker.load_model)
        self.request_predict.connect(worker.predict)
        self.request_fill.connect(worker.fill_boxes)
        worker.model_ready.connect(self._on_model_ready)
        worker.prediction.connect(self._on_prediction)
        worker.progress.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        worker.errored.connect(self._on_worker_error)
        self.model_info = None
        active = self.project.active_model()
        if active is None:
            self.device_label.setText("No model yet: review a few images, then Train")
            self.act_predict_all.setEnabled(False)
        else:
            self.device_label.setText(f"loading model {active.name}…")
            self.request_load.emit(active.path)

    def load_model(self, weights: str) -> None:
        """Swap the model in the running worker (no restart)."""
        if self.worker_thread is not None:
            self.request_load.emit(weights)

    def stop_worker(self) -> None:
        if self.worker_thread is not None:
            wt, self.worker_thread = self.worker_thread, None
            for sig in (self.request_load, self.request_predict, self.request_fill):
                try:
                    sig.disconnect()
                except (RuntimeError, TypeError):
                    pass
            wt.stop()
            wt.worker.close()

    def _on_model_ready(self, info: ModelInfo) -> None:
        self.model_info = info
        self.device_label.setText(f"{info.device} · model: {Path(info.name).stem}")
        self.act_predict_all.setEnabled(True)
        if info.notice:
            self.statusBar().showMessage(info.notice, 8000)
        self._asked.clear()
        if self.current_image_id is not None:
            self._ask_prediction(self.current_image_id)

    def _ask_prediction(self, image_id: int) -> None:
        """Opening an image asks for its prediction first (once per model)."""
        if self.model_info is None or self.project is None or image_id in self._asked:
            return
        if self.project.image(image_id).status is not ImageStatus.NEW:
            return
        self._asked.add(image_id)
        self._next_request += 1
        self.request_predict.emit(self._next_request, [image_id])

    def predict_all(self) -> None:
        if self.model_info is None or self.project is None:
            QMessageBox.information(self, "No model yet",
                                    "There is no model to pre-annotate with yet. Review a few images "
                                    "(Space marks one reviewed), then Train.")
            return
        todo = [r.id for r in self.project.images([ImageStatus.NEW, ImageStatus.PREDICTED])]
        if self.current_image_id in todo:  # the image in front of the person first
            todo.remove(self.current_image_id)
            todo.insert(0, self.current_image_id)
        self._next_request += 1
        self._batch_request = self._next_request
        self.progress.setRange(0, max(1, len(todo)))
        self.progress.setValue(0)
        self.progress.setVisible(True)
        self.act_cancel.setEnabled(True)
        self.request_predict.emit(self._batch_request, todo)

    def cancel_work(self) -> None:
        if self.worker_thread is not None:
            self.worker_thread.worker.cancel_event.set()

    def _on_prediction(self, pred) -> None:
        if self.project is None:
            return
        self.image_list.model.update_record(self.project.image(pred.image_id))
        if pred.image_id == self.current_image_id:
            self.refresh_instances()
            self.predictions_shown.emit(pred.image_id)

    def _on_progress(self, p: Progress) -> None:
        if p.request_id == self._batch_request:
            self.progress.setValue(p.done)
            self.progress.setFormat(f"%v/%m  ETA {int(p.eta_s)} s")

    def _on_finished(self, request_id: int) -> None:
        if request_id == self._batch_request:
            self.progress.setVisible(False)
            self.act_cancel.setEnabled(False)
            self._batch_request = -1
            if self.project is not None:
                counts = self.project.status_counts()
                self.statusBar().showMessage(
                    "Pre-annotation finished: " + ", ".join(f"{n} {s.value}" for s, n in counts.items() if n), 8000)

    def _on_worker_error(self, message: str) -> None:
        self.statusBar().showMessage(message, 15000)
        if self.model_info is None:
            self.device_label.setText("model: failed to load")

    # -- images -----------------------------------------------------------------------------
    def show_image(self, image_id: int) -> None:
        if self.project is None:
            return
        self.current_image_id = image_id
        rec = self.project.image(image_id)
        self.image_list.select(image_id)
        self.loader.request(image_id, self.project.abspath(rec))
        for step in (1, -1):
            nb = self.image_list.neighbour(image_id, step)
            if nb is not None:
                self.loader.prefetch(nb, self.project.abspath(self.project.image(nb)))

    def _on_loaded(self, result: LoadedImage) -> None:
        if self.project is None or result.request_id != self.loader.latest_request:
            return  # an answer to a request a newer one replaced
        if result.rgb is None:
            self.project.mark_unreadable(result.image_id, result.error.split(": ", 1)[-1])
            self.image_list.model.update_record(self.project.image(result.image_id))
            self.statusBar().showMessage(f"Skipped unreadable image: {result.error}", 8000)
            return
        self.canvas.set_image(result.rgb)
        self.refresh_instances()
        self.image_shown.emit(result.image_id)
        self._ask_prediction(result.image_id)

    def refresh_instances(self) -> None:
        if self.project is None or self.current_image_id is None:
            return
        instances = self.project.instances(self.current_image_id)
        self.canvas.set_instances(instances, self._categories)
        self.instance_list.blockSignals(True)
        self.instance_list.clear()
        for inst in instances:
            cat = self._categories.get(inst.category_id)
            state = "accepted" if inst.accepted else ("edited" if inst.touched_by_person else "predicted")
            score = f"{inst.score:.2f}" if inst.score is not None else "—"
            item = QListWidgetItem(f"{cat.name if cat else '?'}   {score}   {inst.source} · {state}")
            item.setData(Qt.ItemDataRole.UserRole, inst.id)
            self.instance_list.addItem(item)
        self.instance_list.blockSignals(False)

    def step(self, delta: int) -> None:
        if self.current_image_id is None:
            return
        nb = self.image_list.neighbour(self.current_image_id, delta)
        if nb is not None:
            self.show_image(nb)

    def mark_reviewed(self) -> None:
        if self.project is None or self.current_image_id is None:
            return
        self.project.set_status(self.current_image_id, ImageStatus.REVIEWED)
        self.image_list.model.update_record(self.project.image(self.current_image_id))
        self.step(1)

    # -- selection sync ---------------------------------------------------------------------
    def _on_canvas_selection(self, ids: list[int]) -> None:
        self.instance_list.blockSignals(True)
        for i in range(self.instance_list.count()):
            item = self.instance_list.item(i)
            item.setSelected(item.data(Qt.ItemDataRole.UserRole) in ids)
        self.instance_list.blockSignals(False)

    def _on_list_selection(self) -> None:
        ids = [it.data(Qt.ItemDataRole.UserRole) for it in self.instance_list.selectedItems()]
        self.canvas.select_ids(ids)

    def _on_threshold(self, value: int) -> None:
        self.score_label.setText(f"{value / 100:.2f}")
        self.canvas.apply_threshold(value / 100)

    # -- drag and drop, closing ---------------------------------------------------------------
    def dragEnterEvent(self, event):  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):  # noqa: N802
        for url in event.mimeData().urls():
            path = Path(url.toLocalFile())
            if path.is_dir():
                self.open_folder(str(path))
                return

    def closeEvent(self, event):  # noqa: N802
        if self._batch_request >= 0:
            answer = QMessageBox.question(self, "Quit Loupe?",
                                          "Pre-annotation is still running. Stop it and quit?")
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        self.stop_worker()
        self.loader.shutdown()
        if self.project is not None:
            self.project.close()
        super().closeEvent(event)
