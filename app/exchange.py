"""File > Import COCO… and Export COCO…: the same all-or-nothing import and the same export as
``loupe import`` / ``loupe export``, run off the GUI thread, with the outcome shown in words."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog, QMainWindow, QMessageBox

from detector import formats
from detector.coco import export_project
from detector.formats import FORMATS
from detector.errors import LoupeError
from detector.store import Project

from .tasks import Jobs


class CocoExchange(QObject):
    """Imports and exports for the window's current project; ``finished(text)``, ``failed(text)``."""

    finished = Signal(str)
    failed = Signal(str)

    def __init__(self, window: QMainWindow, project: Callable[[], Project | None],
                 after_import: Callable[[], None]):
        super().__init__(window)
        self.window, self.project, self.after_import = window, project, after_import
        self.jobs = Jobs(self)

    def import_file(self, path: str | None = None, fmt: str | None = None) -> None:
        """A file (COCO, COCO results, labelme, VOC, data.yaml) or, with ``fmt``, a folder."""
        project = self.project()
        if project is None:
            return
        if path is None:
            if fmt in ("yolo", "voc", "labelme"):
                path = QFileDialog.getExistingDirectory(self.window, f"Import a {FORMATS[fmt].name.upper()} folder",
                                                        str(project.root))
            else:
                path, _ = QFileDialog.getOpenFileName(
                    self.window, "Import annotations", str(project.root),
                    "COCO, COCO results or labelme JSON (*.json);;YOLO data.yaml (*.yaml *.yml);;"
                    "Pascal VOC XML (*.xml);;All files (*)")
            if not path:
                return
        self.window.statusBar().showMessage(f"Importing {path}…")
        self.jobs.start(lambda: formats.import_file(project, path, fmt), self._imported, self._failed)

    def export_format(self, fmt: str, path: str | None = None, **options) -> None:
        """YOLO, VOC or labelme into a folder (COCO: ``export_file``)."""
        project = self.project()
        if project is None:
            return
        if path is None:
            path = QFileDialog.getExistingDirectory(self.window, f"Export as {fmt} into a folder", str(project.root))
            if not path:
                return
        self.window.statusBar().showMessage(f"Exporting {fmt} to {path}…")
        self.jobs.start(lambda: formats.export_file(project, path, fmt, **options), self._done, self._failed)

    def export_file(self, path: str | None = None, *, polygons: bool = False,
                    reviewed_only: bool = False) -> None:
        project = self.project()
        if project is None:
            return
        if path is None:
            default = str(project.root / "annotations.json")
            path, _ = QFileDialog.getSaveFileName(self.window, "Export COCO annotations", default,
                                                  "COCO JSON (*.json)")
            if not path:
                return
        self.window.statusBar().showMessage(f"Exporting {path}…")

        def work() -> str:
            data = export_project(project, path, polygons=polygons, reviewed_only=reviewed_only)
            return (f"Wrote {Path(path).name}: {len(data['images'])} images, "
                    f"{len(data['annotations'])} annotations, {len(data['categories'])} categories"
                    + (" (masks as polygons)" if polygons else " (masks as RLE)"))

        self.jobs.start(work, self._done, self._failed)

    def _imported(self, summary: str) -> None:
        self.after_import()
        self._done(summary)

    def _show(self, icon: QMessageBox.Icon, text: str, status_ms: int) -> None:
        """The outcome in the status bar and in a box that does not block the window."""
        self.window.statusBar().showMessage(text.splitlines()[0], status_ms)
        box = QMessageBox(icon, "Loupe", text, QMessageBox.StandardButton.Ok, self.window)
        box.setModal(False)
        box.show()
        self._last_box = box

    def _done(self, text: str) -> None:
        self._show(QMessageBox.Icon.Information, text, 15000)
        self.finished.emit(text)

    def _failed(self, exc: BaseException) -> None:
        # LoupeError messages already name the file and the problem; anything else is a bug,
        # still shown rather than lost.
        text = str(exc) if isinstance(exc, LoupeError) else f"{type(exc).__name__}: {exc}"
        self._show(QMessageBox.Icon.Warning, text, 30000)
        self.failed.emit(text)

    def wait(self) -> None:
        """Block until a running import or export has finished."""
        self.jobs.pool.waitForDone()

    def shutdown(self) -> None:
        self.jobs.shutdown()
