"""The main window assembles docks, actions and the canvas; behaviour lives in the widgets,
the editor (edits and undo) and the workers (model, image decoding)."""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (QDialog, QDockWidget, QFileDialog, QHBoxLayout, QLabel,
                               QMainWindow, QMessageBox, QProgressBar, QSlider, QTextBrowser,
                               QToolBar, QVBoxLayout, QWidget)

from detector.domain import ImageStatus, Prediction
from detector.store import Project, ProjectError
from detector.versions import next_checkpoint, register

from .canvas import ImageCanvas, Tool
from .docks import CategoriesPanel, CategoryDialog, InstancesPanel
from .editor import Editor
from .exchange import CocoExchange
from .folder import FolderController
from .image_list import ImageListWidget
from .autotrain import AutoTrainer
from .loader import ImageLoader, LoadedImage
from .pretrained import StartingModel
from .training import (ModelVersionsDialog, TrainingPanel, TrainRunner, TrainSettings,
                       TrainSettingsDialog)
from .model_side import ModelSide
from .workers import ModelInfo

ORDER_KEY = "image_order"  # project meta: "" (file name) or "uncertainty"


class MainWindow(QMainWindow):
    """One project at a time. ``image_shown(image_id)`` fires once an image and its instances show."""

    image_shown = Signal(int)
    predictions_shown = Signal(int)  # image id whose fresh predictions are on screen

    def __init__(self, project: Project | None = None):
        super().__init__()
        self.setWindowTitle("Loupe")
        self.resize(1280, 800)
        self.setAcceptDrops(True)
        self.project: Project | None = None
        self.current_image_id: int | None = None
        self.model_side = ModelSide(lambda: self.project, self)  # the worker, on its own thread

        self.canvas = ImageCanvas(self)
        self.starting = StartingModel(self, lambda: self.project)
        self.starting.added.connect(self._on_starting_model)
        self.starting.message.connect(lambda m: self.statusBar().showMessage(m, 15000))
        central = QWidget()
        column = QVBoxLayout(central)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.starting.banner)
        column.addWidget(self.canvas, 1)
        self.setCentralWidget(central)
        self.editor = Editor(self.canvas, self)
        self.editor.changed.connect(self.refresh_instances)
        self.editor.fill_requested.connect(self._ask_fill)
        self.editor.message.connect(lambda m: self.statusBar().showMessage(m, 6000))
        self.canvas.point_clicked.connect(self._place_keypoint)
        self.canvas.space_tapped.connect(self.mark_reviewed)
        self.loader = ImageLoader(self)
        self.loader.loaded.connect(self._on_loaded)

        self.image_list = ImageListWidget()
        self.image_list.image_chosen.connect(self.show_image)
        self.image_list.ids_with = lambda key, image_id=None: (
            self.project.image_ids_with(key, image_id) if self.project is not None else set())
        self.image_list.order.currentIndexChanged.connect(
            lambda: self.project is not None and self.project.set_meta(ORDER_KEY, self.image_list.order.currentData()))
        self._dock("Images", self.image_list, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.instances_panel = InstancesPanel()
        self.instances_panel.ids_selected.connect(self.canvas.select_ids)
        self.instances_panel.visibility_changed.connect(self._on_instance_visibility)
        self.canvas.selection_changed.connect(self.instances_panel.select_ids)
        self._dock("Instances", self.instances_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self.categories_panel = CategoriesPanel()
        self.categories_panel.visibility_changed.connect(self._on_category_visibility)
        self.categories_panel.current_changed.connect(self._on_current_category)
        self.categories_panel.add_requested.connect(self.add_category)
        self.categories_panel.edit_requested.connect(self.edit_category)
        self._dock("Categories", self.categories_panel, Qt.DockWidgetArea.RightDockWidgetArea)

        self.train_settings = TrainSettings()
        self.runner = TrainRunner(self)
        self.runner.event.connect(self._on_train_event)
        self.runner.finished.connect(self._on_train_finished)
        self.training_panel = TrainingPanel()
        self.training_panel.train_clicked.connect(self.start_training)
        self.training_panel.cancel_clicked.connect(self.runner.cancel)
        self.training_panel.settings_clicked.connect(self.edit_train_settings)
        self.training_dock = self._dock("Training", self.training_panel, Qt.DockWidgetArea.BottomDockWidgetArea)
        self._reannotate_after_load = False
        self.resizeDocks([self.training_dock], [250], Qt.Orientation.Vertical)
        self.autotrain = AutoTrainer(lambda: self.project, lambda: self.train_settings,
                                     lambda: self.runner.running, self.start_training, self)
        self.autotrain.status.connect(self.training_panel.auto.setText)

        self.exchange = CocoExchange(self, lambda: self.project, self._after_import)
        self.folder = FolderController(self.image_list, lambda: self.current_image_id is None, self)
        self.folder.first_image.connect(self.show_image)
        self.folder.message.connect(lambda text, ms: self.statusBar().showMessage(text, ms))
        self.scanned = self.folder.scanned  # ScanResult: the folder was read again in the background
        self._build_actions()
        self.device_label = QLabel("model: none")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(240)
        self.progress.setVisible(False)
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(self.device_label)
        self._wire_model_side()
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
        self.addAction(act)  # shortcuts work wherever the focus is in the window
        return act

    def _build_actions(self) -> None:
        a = self._action
        self.act_open = a("Open folder…", self.choose_folder, QKeySequence.StandardKey.Open)
        self.act_prev = a("Previous", lambda: self.step(-1), ["A", "PgUp"], "Previous image")
        self.act_next = a("Next", lambda: self.step(1), ["D", "PgDown"], "Next image")
        self.act_fit = a("Fit", self.canvas.fit, "F", "Fit the image in the window")
        self.act_one = a("1:1", self.canvas.actual_size, "Ctrl+1", "Actual pixels")
        self.act_reviewed = a("Reviewed ✓", self.mark_reviewed, None,
                              "Keep what is shown, mark the image reviewed and go to the next (Space)")
        self.act_undo = self.editor.undo_group.createUndoAction(self, "Undo")
        self.act_undo.setShortcut(QKeySequence("Ctrl+Z"))
        self.act_redo = self.editor.undo_group.createRedoAction(self, "Redo")
        self.act_redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.addActions([self.act_undo, self.act_redo])
        self.act_delete = a("Delete", self.editor.delete_selected, ["Del", "Backspace"], "Delete selected")
        self.act_duplicate = a("Duplicate", self.editor.duplicate_selected, "Ctrl+D", "Duplicate selected")
        self.act_accept = a("Accept", self.editor.accept_selected, ["Return", "Enter"], "Accept selected")
        self.act_accept_all = a("Accept all ≥ slider", lambda: self.editor.accept_above(self.canvas.min_score),
                                ["Ctrl+Return", "Ctrl+Enter"], "Accept every prediction above the slider")
        self.act_keypoint_vis = a("Keypoint visibility", self.editor.toggle_keypoint, "V",
                                  "Cycle the clicked keypoint: visible / occluded / unlabelled")
        self.act_smaller = a("Smaller brush", lambda: self._brush(-2), "[")
        self.act_bigger = a("Bigger brush", lambda: self._brush(2), "]")
        self.act_help = a("Shortcuts", self.show_shortcuts, ["F1", "?"], "Keyboard shortcuts")
        self.act_predict_all = a("Pre-annotate all", self.predict_all, "Ctrl+P",
                                 "Pre-annotate every image not yet reviewed")
        self.act_cancel = a("Cancel", self.cancel_work, "Ctrl+.", "Cancel background work")
        self.act_cancel.setEnabled(False)
        self.act_restart_worker = a("Restart model worker", self.start_worker, None,
                                    "Start a fresh inference worker (after an error)")
        self.act_train = a("Train", self.start_training, "Ctrl+T", "Fine-tune on the reviewed images")
        self.act_train_settings = a("Training settings…", self.edit_train_settings)
        self.act_versions = a("Model versions…", self.show_versions)
        self.act_coco = a("Start from COCO weights…", self._start_from_coco, None,
                          "torchvision's COCO Mask R-CNN as the model, through a class mapping")
        self.act_load_weights = a("Load weights…", lambda: self.starting.load_weights(), None,
                                  "A Loupe checkpoint, or a torchvision Mask R-CNN state dict (.pth)")
        self.act_import = a("Import annotations…", lambda: self.exchange.import_file(), "Ctrl+I",
                            "Import COCO, COCO results, labelme, VOC or a YOLO data.yaml (all or nothing)")
        self.act_import_folder = {
            fmt: a(f"Import {label} folder…", lambda _=False, f=fmt: self.exchange.import_file(fmt=f), None,
                   f"Import a folder of {label} annotations (all or nothing)")
            for fmt, label in (("yolo", "YOLO"), ("voc", "Pascal VOC"), ("labelme", "labelme"))}
        self.act_export_as = {
            fmt: a(f"Export as {label}…", lambda _=False, f=fmt: self.exchange.export_format(f), None,
                   f"Export every image as {label} into a folder")
            for fmt, label in (("yolo", "YOLO"), ("voc", "Pascal VOC"), ("labelme", "labelme"))}
        self.act_export = a("Export COCO…", lambda: self.exchange.export_file(), "Ctrl+E",
                            "Export every image as COCO JSON, masks as RLE")
        self.act_export_polygons = a("Export COCO with polygons…",
                                     lambda: self.exchange.export_file(polygons=True), "Ctrl+Shift+E",
                                     "Export as COCO JSON with masks traced as polygons")
        self.act_export_reviewed = a("Export reviewed images only…",
                                     lambda: self.exchange.export_file(reviewed_only=True), None,
                                     "Export only the images marked reviewed")
        self.act_quit = a("Quit", self.close, QKeySequence.StandardKey.Quit)
        for n in range(1, 10):
            a(f"Category {n}", lambda _=False, n=n: self._category_by_number(n), str(n))

        self.tool_group = QActionGroup(self)
        self.tool_actions: dict[Tool, QAction] = {}
        for tool, text, key, tip in [
            (Tool.SELECT, "Select", "S", "Select, move, resize; drag keypoints"),
            (Tool.BOX, "Box", "W", "Draw a box; the model fills in its mask"),
            (Tool.POLYGON, "Polygon", "P", "Click points, Enter or double-click to close"),
            (Tool.BRUSH, "Brush", "B", "Paint the selected mask ([ and ] size)"),
            (Tool.ERASER, "Eraser", "E", "Erase from the selected mask ([ and ] size)"),
            (Tool.KEYPOINT, "Keypoint", "K", "Click to place the next missing keypoint"),
        ]:
            act = a(text, lambda _=False, t=tool: self.set_tool(t), key, tip)
            act.setCheckable(True)
            self.tool_group.addAction(act)
            self.tool_actions[tool] = act
        self.tool_actions[Tool.SELECT].setChecked(True)

        m = self.menuBar().addMenu("&File")
        m.addAction(self.act_open)
        self.recent_menu = m.addMenu("Open recent")
        self._fill_recent()
        m.addSeparator()
        m.addAction(self.act_import)
        m.addActions(list(self.act_import_folder.values()))
        m.addSeparator()
        m.addActions([self.act_export, self.act_export_polygons, self.act_export_reviewed])
        m.addActions(list(self.act_export_as.values()))
        m.addSeparator()
        m.addAction(self.act_quit)
        e = self.menuBar().addMenu("&Edit")
        e.addActions([self.act_undo, self.act_redo])
        e.addSeparator()
        e.addActions([self.act_delete, self.act_duplicate, self.act_accept, self.act_accept_all,
                      self.act_keypoint_vis, self.act_reviewed])
        t = self.menuBar().addMenu("&Tools")
        t.addActions(list(self.tool_actions.values()))
        v = self.menuBar().addMenu("&View")
        v.addActions([self.act_fit, self.act_one, self.act_prev, self.act_next])
        mm = self.menuBar().addMenu("&Model")
        mm.addActions([self.act_predict_all, self.act_cancel, self.act_restart_worker])
        mm.addSeparator()
        mm.addActions([self.act_train, self.act_train_settings, self.act_versions])
        mm.addSeparator()
        mm.addActions([self.act_coco, self.act_load_weights])
        h = self.menuBar().addMenu("&Help")
        h.addAction(self.act_help)

        tb = QToolBar("Main")
        tb.setObjectName("main toolbar")
        tb.addActions([self.act_open, self.act_prev, self.act_next, self.act_fit])
        tb.addSeparator()
        tb.addActions([self.act_undo, self.act_redo, self.act_accept, self.act_reviewed])
        tb.addSeparator()
        tb.addActions([self.act_predict_all, self.act_cancel, self.act_train])
        tb.addSeparator()
        tb.addWidget(self._slider_box())
        self.addToolBar(tb)
        tools = QToolBar("Tools")
        tools.setObjectName("tools toolbar")
        tools.addActions(list(self.tool_actions.values()))
        self.addToolBar(Qt.ToolBarArea.LeftToolBarArea, tools)

    def _slider_box(self) -> QWidget:
        box = QWidget()
        lay = QHBoxLayout(box)
        lay.setContentsMargins(6, 0, 6, 0)
        lay.addWidget(QLabel("Confidence"))
        self.score_slider = QSlider(Qt.Orientation.Horizontal)
        self.score_slider.setRange(0, 100)
        self.score_slider.setValue(50)
        self.score_slider.setMaximumWidth(140)
        self.score_label = QLabel("0.50")
        self.score_slider.valueChanged.connect(self._on_threshold)
        lay.addWidget(self.score_slider)
        lay.addWidget(self.score_label)
        lay.addWidget(QLabel("  Mask"))
        self.alpha_slider = QSlider(Qt.Orientation.Horizontal)
        self.alpha_slider.setRange(0, 255)
        self.alpha_slider.setValue(self.canvas.mask_alpha)
        self.alpha_slider.setMaximumWidth(100)
        self.alpha_slider.sliderReleased.connect(
            lambda: self.canvas.set_mask_alpha(self.alpha_slider.value(), self.editor.categories))
        lay.addWidget(self.alpha_slider)
        self.canvas.min_score = 0.5
        return box

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for folder in _recent_folders()[:8]:
            act = self.recent_menu.addAction(folder)
            act.triggered.connect(lambda _=False, f=folder: self.open_folder(f))

    def show_shortcuts(self) -> None:
        rows = []
        for act in self.actions():
            keys = ", ".join(k.toString() for k in act.shortcuts())
            if keys:
                rows.append(f"<tr><td><b>{keys}</b></td><td>{act.text()}</td></tr>")
        rows.append("<tr><td><b>Space</b></td><td>Keep what is shown, mark reviewed, next image</td></tr>")
        rows.append("<tr><td><b>Space + drag, middle drag</b></td><td>Pan</td></tr>")
        rows.append("<tr><td><b>Wheel</b></td><td>Zoom to the cursor</td></tr>")
        dlg = QDialog(self)
        dlg.setWindowTitle("Keyboard shortcuts")
        text = QTextBrowser()
        text.setHtml("<table cellpadding=3>" + "".join(rows) + "</table>")
        lay = QVBoxLayout(dlg)
        lay.addWidget(text)
        dlg.resize(460, 560)
        dlg.show()
        self._help = dlg

    # -- project ----------------------------------------------------------------------------
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of images")
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str, project_path: str | None = None) -> bool:
        try:
            project = Project(folder, project_path, exclusive=True)
        except ProjectError as exc:
            QMessageBox.warning(self, "Cannot open folder", str(exc))
            return False
        self.set_project(project)
        return True

    def set_project(self, project: Project) -> None:
        if self.project is not None and self.project is not project:
            self.stop_worker()
            self.exchange.wait()  # an import lands whole before its project closes
            self.folder.close()
            self.project.close()
        self.project = project
        self.current_image_id = None
        settings = QSettings()
        recent = [str(project.root)] + [f for f in _recent_folders() if f != str(project.root)]
        settings.setValue("recent_folders", recent[:8])
        self._fill_recent()
        self.setWindowTitle(f"Loupe — {project.root}")
        self.editor.set_project(project)
        self._show_categories()
        # What the project knows is shown at once; the rest of the list and the folder itself are
        # read in the background (app/folder.py), so a big folder opens as fast as a small one.
        self.folder.open(project, project.get_meta(ORDER_KEY) or "")
        self.start_worker()

    def _after_import(self) -> None:
        """An import added images' annotations and maybe categories: show them."""
        if self.project is None:
            return
        self.editor.reload_categories()
        self._show_categories()
        self.folder.reload()
        if self.current_image_id is not None:
            self.image_list.select(self.current_image_id)
        self.refresh_instances()

    def _show_categories(self) -> None:
        self.image_list.set_categories(list(self.editor.categories.values()))
        self.categories_panel.set_categories(list(self.editor.categories.values()),
                                             self.canvas.hidden_categories)
        if self.editor.current_category is not None:
            self.categories_panel.set_current(self.editor.current_category)

    def add_category(self) -> None:
        dlg = CategoryDialog(None, self)
        if dlg.exec() and dlg.result_category is not None:
            try:
                cat = self.project.add_category(dlg.result_category)
            except ProjectError as exc:
                QMessageBox.warning(self, "Category", str(exc))
                return
            self.editor.reload_categories()
            self.editor.current_category = cat.id
            self._show_categories()

    def edit_category(self, category_id: int) -> None:
        dlg = CategoryDialog(self.editor.categories[category_id], self)
        if dlg.exec() and dlg.result_category is not None:
            self.project.update_category(dlg.result_category)
            self.editor.reload_categories()
            self._show_categories()
            self.refresh_instances()

    def _category_by_number(self, n: int) -> None:
        ids = list(self.editor.categories)
        if n - 1 < len(ids):
            self.editor.set_category(ids[n - 1])
            self.categories_panel.set_current(ids[n - 1])

    def _on_current_category(self, category_id: int) -> None:
        self.editor.current_category = category_id

    # -- the model side (app/model_side.py) --------------------------------------------------
    def _wire_model_side(self) -> None:
        m = self.model_side
        m.ready.connect(self._on_model_ready)
        m.warmed.connect(self._on_warmed)
        m.predicted.connect(self._on_prediction)
        m.filled.connect(lambda pred: self.editor.apply_fill(pred.image_id, list(pred.instances)))
        m.batch_started.connect(self._on_batch_started)
        m.batch_progress.connect(self._on_batch_progress)
        m.batch_done.connect(self._on_batch_done)
        m.state.connect(self.device_label.setText)
        m.message.connect(lambda text, ms: self.statusBar().showMessage(text, ms))

    def start_worker(self) -> None:
        self.starting.refresh()
        self.act_predict_all.setEnabled(False)
        self.model_side.start()

    def stop_worker(self) -> None:
        self.model_side.stop()

    def load_model(self, weights: str) -> None:
        """Swap the model in the running worker (no restart)."""
        self.model_side.load(weights)

    def _on_warmed(self, device: str) -> None:
        """torch is imported (on the worker's thread): the starting-model offer can be made."""
        self.starting.ready = True
        if self.model_side.info is None and self.project is not None and self.project.active_model() is None:
            self.device_label.setText(f"{device} · no model yet: start from COCO weights, or review "
                                      "a few images (Space) and Train")
        self.starting.refresh()

    def _start_from_coco(self) -> None:
        from detector.pretrained import cache_path

        if cache_path().is_file():
            self.starting.use_coco()
        else:
            self.starting.refresh()
            self.starting.banner.setVisible(True)
            self.starting.download()

    def _on_starting_model(self, path: str) -> None:
        """A COCO start or a loaded file is now the active model: load it and pre-annotate."""
        self.statusBar().showMessage(f"Starting model ready ({Path(path).name}); pre-annotating…", 10000)
        self._reannotate_after_load = True
        self.load_model(path)

    def _on_model_ready(self, info: ModelInfo) -> None:
        self.device_label.setText(f"{info.device} · model: {Path(info.name).stem}")
        self.act_predict_all.setEnabled(True)
        self.autotrain.announce()
        if info.notice:
            self.statusBar().showMessage(info.notice, 8000)
        if self._reannotate_after_load:
            self._reannotate_after_load = False
            self.predict_all()
        elif self.current_image_id is not None:
            self.model_side.predict_image(self.current_image_id)

    def _ask_fill(self, image_id: int, boxes: list, category_ids: list) -> None:
        if not self.model_side.fill(image_id, boxes, category_ids):
            self.statusBar().showMessage("No model yet: the box stays a plain box (paint its mask "
                                         "with B, or train a model).", 6000)

    def predict_all(self) -> None:
        if not self.model_side.predict_all(first=self.current_image_id):
            QMessageBox.information(self, "No model yet",
                                    "There is no model to pre-annotate with yet. Review a few images "
                                    "(Space marks one reviewed), then Train.")

    def cancel_work(self) -> None:
        self.model_side.cancel()

    def _on_prediction(self, pred: Prediction) -> None:
        if self.project is None:
            return
        self.image_list.model.update_record(self.project.image(pred.image_id))
        if pred.image_id == self.current_image_id:
            self.refresh_instances()
            self.predictions_shown.emit(pred.image_id)

    def _on_batch_started(self, n: int) -> None:
        self.progress.setRange(0, max(1, n))
        self.progress.setValue(0)
        self.progress.setFormat("%v/%m")
        self.progress.setVisible(True)
        self.act_cancel.setEnabled(True)

    def _on_batch_progress(self, done: int, eta_s: float) -> None:
        self.progress.setValue(done)
        self.progress.setFormat(f"%v/%m  ETA {int(eta_s)} s")

    def _on_batch_done(self, error: str) -> None:
        self.progress.setVisible(False)
        self.act_cancel.setEnabled(False)
        if error:
            self.statusBar().showMessage(f"Pre-annotation stopped: {error}", 30000)
        elif self.project is not None:
            counts = self.project.status_counts()
            self.statusBar().showMessage(
                "Pre-annotation finished: " + ", ".join(f"{n} {s.value}" for s, n in counts.items() if n), 8000)

    # -- training ---------------------------------------------------------------------------
    def edit_train_settings(self) -> None:
        dlg = TrainSettingsDialog(self.train_settings, self)
        if dlg.exec():
            self.train_settings = dlg.settings()
            self.autotrain.announce()

    def start_training(self) -> None:
        if self.project is None or self.runner.running:
            return
        reviewed = self.project.images(ImageStatus.REVIEWED)
        labelled = [r for r in reviewed if any(i.touched_by_person for i in self.project.instances(r.id))]
        if len(reviewed) < 2 or not labelled:
            self._notify("Not enough to train on",
                         f"Training needs at least 2 reviewed images with some objects labelled "
                         f"(now {len(reviewed)} reviewed, {len(labelled)} with objects). Correct a few "
                         "images and mark them reviewed with Space.")
            return
        output = next_checkpoint(self.project, int(time.time()))
        active = self.project.active_model()
        self.training_panel.started()
        self.training_dock.show()
        self.act_train.setEnabled(False)
        self._train_started_settings = dict(self.train_settings.__dict__)
        self.autotrain.note_started()
        self.runner.start(str(self.project.root), str(self.project.db_path), output,
                          self.train_settings, active.path if active else None)

    def _on_train_event(self, ev: dict) -> None:
        self.training_panel.on_event(ev)

    def _on_train_finished(self, result: dict) -> None:
        self.act_train.setEnabled(True)
        if not result["ok"]:
            self.training_panel.stopped(result["message"])
            if not result["cancelled"]:
                self._notify("Training stopped", result["message"])
            return
        metrics = result.get("metrics") or {}
        reg = register(self.project, result["checkpoint"], metrics.get("after"), metrics.get("before"),
                       {**self._train_started_settings, "log": result.get("log")},
                       int(result.get("images_seen") or 0))
        text = reg.text()
        if reg.promoted:
            self._reannotate_after_load = True
            self.load_model(reg.version.path)
        self.training_panel.stopped(text)
        self.statusBar().showMessage(text, 15000)
        self.autotrain.announce()

    def show_versions(self) -> None:
        if self.project is None:
            return
        dlg = ModelVersionsDialog(self.project, self)
        dlg.activate.connect(lambda vid: (self.activate_version(vid), dlg.refresh()))
        dlg.delete.connect(lambda vid: (self.delete_version(vid), dlg.refresh()))
        dlg.export.connect(self.export_version)
        dlg.show()
        self._versions_dialog = dlg

    def activate_version(self, version_id: int) -> None:
        v = next(m for m in self.project.models() if m.id == version_id)
        self.project.activate_model(version_id)
        self._reannotate_after_load = True
        self.load_model(v.path)

    def delete_version(self, version_id: int) -> None:
        v = next(m for m in self.project.models() if m.id == version_id)
        if v.active:
            self._notify("Model versions", "The active model cannot be deleted; activate another first.")
            return
        self.project.delete_model(version_id)
        for f in (Path(v.path), Path(v.path).with_suffix(".log.jsonl")):
            f.unlink(missing_ok=True)

    def export_version(self, version_id: int) -> None:
        import shutil

        v = next(m for m in self.project.models() if m.id == version_id)
        path, _ = QFileDialog.getSaveFileName(self, "Export checkpoint", f"{v.name}.pt", "Checkpoints (*.pt)")
        if path:
            shutil.copyfile(v.path, path)

    def _notify(self, title: str, text: str) -> None:
        """A message that does not block (the app keeps working while it is shown)."""
        box = QMessageBox(QMessageBox.Icon.Information, title, text, QMessageBox.StandardButton.Ok, self)
        box.setModal(False)
        box.show()
        self._last_notice = box
        self.statusBar().showMessage(text, 15000)

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
        if self.project is None:
            return
        if result.rgb is None:
            # A fact about the file, worth keeping even when the person has moved on.
            self.project.mark_unreadable(result.image_id, result.error.split(": ", 1)[-1])
            self.image_list.model.update_record(self.project.image(result.image_id))
            if result.request_id == self.loader.latest_request:
                self.statusBar().showMessage(f"Skipped unreadable image: {result.error}", 8000)
            return
        if result.request_id != self.loader.latest_request:
            return  # an answer to a request a newer one replaced
        self.editor.set_image(result.image_id)
        self.canvas.hidden_ids.clear()
        self.canvas.set_image(result.rgb)
        self.refresh_instances()
        self.canvas.setFocus()
        self.image_shown.emit(result.image_id)
        self.model_side.predict_image(result.image_id)

    def refresh_instances(self) -> None:
        if self.project is None or self.current_image_id is None or not self.canvas.has_image:
            return
        instances = self.project.instances(self.current_image_id)
        self.canvas.set_instances(instances, self.editor.categories)
        self.instances_panel.set_instances(instances, self.editor.categories, self.canvas.hidden_ids)
        self.instances_panel.select_ids(self.canvas.selected_ids())
        self.image_list.model.update_record(self.project.image(self.current_image_id))

    def step(self, delta: int) -> None:
        if self.current_image_id is None:
            return
        nb = self.image_list.neighbour(self.current_image_id, delta)
        if nb is not None:
            self.show_image(nb)

    def mark_reviewed(self) -> None:
        if self.project is None or self.current_image_id is None:
            return
        # The next image is chosen before the review moves this one (a filter may hide it, the
        # least-confident order sends it to the end).
        nb = self.image_list.neighbour(self.current_image_id, 1)
        self.editor.mark_reviewed(self.canvas.min_score)
        if nb is not None:
            self.show_image(nb)
        self.autotrain.maybe_start()

    # -- tools, visibility ------------------------------------------------------------------
    def set_tool(self, tool: Tool) -> None:
        self.canvas.set_tool(tool)
        self.tool_actions[tool].setChecked(True)
        if tool is Tool.KEYPOINT:
            name = self.editor.next_missing_name()
            self.statusBar().showMessage(f"Click to place '{name}'" if name else
                                         "Select one instance of a keypoint category first", 6000)

    def _place_keypoint(self, x: float, y: float) -> None:
        more = self.editor.place_next_keypoint(x, y)
        name = self.editor.next_missing_name()
        if more and name:
            self.statusBar().showMessage(f"Click to place '{name}'", 6000)
        else:
            self.set_tool(Tool.SELECT)

    def _brush(self, delta: float) -> None:
        self.canvas.brush_radius = max(1.0, min(100.0, self.canvas.brush_radius + delta))
        self.statusBar().showMessage(f"Brush radius {self.canvas.brush_radius:.0f} px", 2000)

    def _on_threshold(self, value: int) -> None:
        self.score_label.setText(f"{value / 100:.2f}")
        self.canvas.apply_threshold(value / 100)

    def _on_instance_visibility(self, instance_id: int, visible: bool) -> None:
        (self.canvas.hidden_ids.discard if visible else self.canvas.hidden_ids.add)(instance_id)
        self.canvas.apply_visibility()

    def _on_category_visibility(self, category_id: int, visible: bool) -> None:
        (self.canvas.hidden_categories.discard if visible else self.canvas.hidden_categories.add)(category_id)
        self.canvas.apply_visibility()

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

    def keyPressEvent(self, event):  # noqa: N802
        # Space anywhere in the window (not only on the canvas) marks reviewed.
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self.mark_reviewed()
            return
        super().keyPressEvent(event)

    def closeEvent(self, event):  # noqa: N802
        busy = [w for w, on in (("pre-annotation", self.model_side.busy),
                                ("training", self.runner.running),
                                ("a COCO import or export", self.exchange.jobs.running),
                                ("preparing a starting model", self.starting.jobs.running)) if on]
        if busy:
            answer = QMessageBox.question(self, "Quit Loupe?",
                                          f"{' and '.join(busy).capitalize()} still running. Stop and quit?")
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        if self.runner.running:
            self.runner.cancel()
            if not self.runner.proc.waitForFinished(10_000):
                self.runner.kill()
        self.stop_worker()
        self.loader.shutdown()
        self.exchange.shutdown()
        self.folder.close()
        self.starting.cancel.set()  # a download stops at its next chunk and keeps what it has
        self.starting.jobs.shutdown()
        self.image_list.model.thumbnails.shutdown()
        self.statusBar().clearMessage()  # also stops the message's timeout timer
        if self.project is not None:
            self.project.close()
        super().closeEvent(event)


def _recent_folders() -> list[str]:
    """Recent folders from QSettings; anything else found there (an older or newer Loupe, a hand
    edit) is ignored rather than misread."""
    value = QSettings().value("recent_folders", [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    return [v for v in value if isinstance(v, str) and v]
