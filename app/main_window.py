"""The main window assembles the canvas, the docks and the controllers, and moves between images.

What happens elsewhere: the action table, menus and tools (actions.py), the model worker and
what its answers change (model_controller.py, model_side.py), training and model versions
(train_controller.py), categories (category_controller.py), the folder and the image list
(folder.py), edits and undo (editor.py), import and export (exchange.py), the starting model
(pretrained.py).
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QMainWindow, QMessageBox, QStatusBar, QVBoxLayout,
                               QWidget)

from detector.store import Project, ProjectError

from .actions import Actions
from .canvas import ImageCanvas
from .category_controller import CategoryController
from .docks import InstancesPanel
from .editor import Editor
from .exchange import CocoExchange
from .folder import FolderController
from .image_list import ImageListWidget
from .loader import ImageLoader, LoadedImage
from .model_controller import ModelController
from .pretrained import StartingModel
from .train_controller import TrainingController
from .view_state import ViewState

ORDER_KEY = "image_order"  # project meta: "" (file name) or "uncertainty"
CONTRAST_KEY = "auto_contrast"  # project meta: "" (on, the default) or "off"


class StatusBar(QStatusBar):
    """A status bar that cuts a long message with "…" to the room beside its permanent widgets
    (the model label), holds it whole in its tooltip while it shows, and cuts it again to the new
    room when the window is resized."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._beside: list[QWidget] = []  # the permanent widgets, whose room a message leaves
        self._cut = ""  # the cut message on show, whose whole line is the tooltip
        self._whole, self._until = "", 0.0  # ...its whole line, and when it times out (0: never)
        self.messageChanged.connect(self._message_changed)  # the bar's own: gone with it

    def addPermanentWidget(self, widget: QWidget, stretch: int = 0) -> None:  # noqa: N802
        self._beside.append(widget)
        super().addPermanentWidget(widget, stretch)

    def room(self) -> int:
        """Pixels a message has beside the permanent widgets that show (the bar spans its window,
        which is laid out before the bar is: a window not yet shown has its size, the bar not)."""
        return max(120, self.window().width() - sum(w.sizeHint().width() for w in self._beside if w.isVisible()) - 40)

    def show_cut(self, text: str, ms: int) -> None:
        shown = self.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, self.room())
        self._cut = shown if shown != text else ""
        self._whole, self._until = text, (time.monotonic() + ms / 1000 if ms else 0.0)
        self.setToolTip(text if self._cut else "")
        self.showMessage(shown, ms)

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self._cut and self.currentMessage() == self._cut:
            left = int((self._until - time.monotonic()) * 1000) if self._until else 0
            if not self._until or left > 0:
                self.show_cut(self._whole, left)

    def _message_changed(self, message: str) -> None:
        if message != self._cut:  # timed out, cleared, or another line (an action's tip) over it
            self._cut = ""
            self.setToolTip("")


class MainWindow(QMainWindow):
    """One project at a time. ``image_shown(image_id)`` fires once an image and its instances show."""

    image_shown = Signal(int)
    predictions_shown = Signal(int)  # image id whose fresh predictions are on screen

    def __init__(self, project: Project | None = None):
        super().__init__()
        self.setWindowTitle("Loupe")
        self.resize(1280, 800)
        self.setStatusBar(StatusBar(self))
        self.setAcceptDrops(True)
        self.project: Project | None = None
        self.view = ViewState()  # what is on screen and how: every widget reads it from here
        self.canvas = ImageCanvas(self, self.view)
        self.starting = StartingModel(self, lambda: self.project)
        self.starting.message.connect(self.say)
        central = QWidget()
        column = QVBoxLayout(central)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        column.addWidget(self.starting.banner)
        column.addWidget(self.canvas, 1)
        self.setCentralWidget(central)
        self.editor = Editor(self.canvas, self)
        self.editor.changed.connect(self.refresh_instances)
        self.editor.message.connect(lambda m: self.say(m, 6000))
        self.canvas.space_tapped.connect(self.mark_reviewed)
        self.loader = ImageLoader(self)
        self.loader.loaded.connect(self._on_loaded)
        self._redraw_request = 0  # the loader request that only redraws the shown image's pixels

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
        instances_dock = self._dock("Instances", self.instances_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self.instances_panel.below_slider.connect(lambda n: instances_dock.setWindowTitle(
            f"Instances ({n} under the slider)" if n else "Instances"))
        self.categories = CategoryController(self)
        self._dock("Categories", self.categories.panel, Qt.DockWidgetArea.RightDockWidgetArea)

        self.training = TrainingController(self, lambda: self.project)
        self.training.use_model.connect(lambda path: self.models.load(path, reannotate=True))
        self.training.running_changed.connect(lambda on: self.acts.train.setEnabled(not on))
        self.training.message.connect(self.say)
        self.training_dock = self._dock("Training", self.training.panel, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.resizeDocks([self.training_dock], [250], Qt.Orientation.Vertical)

        self.exchange = CocoExchange(self, lambda: self.project, self._after_import)
        self.folder = FolderController(self.image_list, lambda: self.current_image_id is None, self)
        self.folder.first_image.connect(self.show_image)
        self.folder.message.connect(self.say)
        self.scanned = self.folder.scanned  # ScanResult: the folder was read again in the background
        self.models = ModelController(self)
        self.model_side = self.models.side
        self.acts = Actions(self)
        self.canvas.point_clicked.connect(self.acts.place_keypoint)
        if project is not None:
            self.set_project(project)

    def _dock(self, title: str, widget: QWidget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(title)
        dock.setWidget(widget)
        self.addDockWidget(area, dock)
        return dock

    @property
    def current_image_id(self) -> int | None:
        return self.view.image_id

    @current_image_id.setter
    def current_image_id(self, image_id: int | None) -> None:
        self.view.image_id = image_id

    def say(self, text: str, ms: int = 15000) -> None:
        """A line in the status bar for ``ms`` milliseconds; cut with "…" where it would run under the
        model label (again when the window is resized), the whole line then in the bar's tooltip."""
        self.statusBar().show_cut(text, ms)

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
            self.models.stop()
            self.exchange.wait()  # an import lands whole before its project closes
            self.folder.close()
            self.project.close()
        self.project = project
        self.current_image_id = None
        self.acts.remember(str(project.root))
        self.setWindowTitle(f"Loupe — {project.root}")
        self.editor.set_project(project)
        self.categories.show()
        self._apply_contrast(project.get_meta(CONTRAST_KEY) != "off")
        # What the project knows is shown at once; the rest of the list and the folder itself are
        # read in the background (app/folder.py), so a big folder opens as fast as a small one.
        self.folder.open(project, project.get_meta(ORDER_KEY) or "")
        self.models.start()

    def _after_import(self) -> None:
        """An import added images' annotations and maybe categories: show them."""
        if self.project is None:
            return
        self.editor.reload_categories()
        self.categories.show()
        self.folder.reload()
        if self.current_image_id is not None:
            self.image_list.select(self.current_image_id)
        self.refresh_instances()

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

    # -- auto contrast (the screen's; the model has its own, ModelConfig.stretch_dim) -------------
    def set_auto_contrast(self, on: bool) -> None:
        """Stretch dim images to the screen's range (``detector.images.stretch_contrast``), or show
        every image as stored; the choice is the project's, kept for the next time."""
        if self.project is None:
            return
        self.project.set_meta(CONTRAST_KEY, "" if on else "off")
        self._apply_contrast(on)
        if self.current_image_id is not None and self.canvas.has_image:
            rec = self.project.image(self.current_image_id)
            self._redraw_request = self.loader.request(self.current_image_id, self.project.abspath(rec))
        self.say("Auto contrast on: dim images are shown stretched to the full range (the files never "
                 "change)" if on else "Auto contrast off: images shown as stored", 8000)

    def _apply_contrast(self, on: bool) -> None:
        self.view.auto_contrast = on
        self.loader.set_stretch(on)
        self.image_list.model.set_stretch(on)
        if self.acts.auto_contrast.isChecked() != on:
            self.acts.auto_contrast.setChecked(on)

    def _on_loaded(self, result: LoadedImage) -> None:
        if self.project is None:
            return
        if result.request_id and result.request_id == self._redraw_request:
            self._redraw_request = 0
            if (result.rgb is not None and result.request_id == self.loader.latest_request
                    and result.image_id == self.current_image_id and self.canvas.set_pixels(result.rgb)):
                return
        if result.rgb is None:
            # A fact about the file, worth keeping even when the person has moved on.
            self.project.mark_unreadable(result.image_id, result.error.split(": ", 1)[-1])
            self.image_list.model.update_record(self.project.image(result.image_id))
            if result.request_id == self.loader.latest_request:
                self.say(f"Skipped unreadable image: {result.error}", 8000)
            return
        if result.request_id != self.loader.latest_request:
            return  # an answer to a request a newer one replaced
        self.editor.set_image(result.image_id)
        self.view.hidden_ids.clear()
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
        self.instances_panel.set_instances(instances, self.editor.categories, self.view.hidden_ids,
                                           self.view.min_score)
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
        self.editor.mark_reviewed(self.view.min_score)
        if nb is not None:
            self.show_image(nb)
        self.training.autotrain.maybe_start()

    def _on_instance_visibility(self, instance_id: int, visible: bool) -> None:
        (self.view.hidden_ids.discard if visible else self.view.hidden_ids.add)(instance_id)
        self.canvas.apply_visibility()

    # -- drag and drop, keys, closing -----------------------------------------------------------
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
                                ("training", self.training.runner.running),
                                ("a COCO import or export", self.exchange.jobs.running),
                                ("preparing a starting model", self.starting.jobs.running)) if on]
        if busy:
            answer = QMessageBox.question(self, "Quit Loupe?",
                                          f"{' and '.join(busy).capitalize()} still running. Stop and quit?")
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
        # Gone from the screen at once: what follows can wait (a training run's end, up to 10 s;
        # the model side's first torch import, 7-15 s on a busy laptop).
        self.hide()
        self.training.stop()
        self.models.stop()
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
