"""The open folder's image list: what the project knows is listed at once, the rest and the
folder itself are read off the GUI thread and stream into the list.

A known project of any size shows its first page of images from the store at once (the path
index: a few milliseconds at 100,000 images); the rest of the stored list, then the files found
new on disk, arrive in chunks from a background job, each chunk a cheap append on the GUI thread.
Files that vanished, were replaced or came back are reconciled by the same job and reach the list
as updates of just those records, never as a reload on the GUI thread.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

from detector.store import Project

from .image_list import ImageListWidget, n_images
from .tasks import Jobs

FIRST_PAGE = 2000  # images listed before the window hands the rest to the background
CHUNK = 5000  # stored records per hand-over (one append on the GUI thread each)


class _Stopped(Exception):
    """The folder was closed while it was being read."""


class FolderController(QObject):
    """``open(project)`` lists and reconciles a folder; ``first_image(id)`` asks the window to show
    the list's first image while ``needs_first()`` says nothing is shown; ``scanned(ScanResult)``
    once the folder is read; ``message(text, ms)`` for the status bar."""

    scanned = Signal(object)
    first_image = Signal(int)
    message = Signal(str, int)

    def __init__(self, image_list: ImageListWidget, needs_first: Callable[[], bool], parent=None):
        super().__init__(parent)
        self.image_list = image_list
        self.needs_first = needs_first
        self.project: Project | None = None
        self.jobs = Jobs(self)
        self._stop = threading.Event()

    def open(self, project: Project, order: str = "") -> None:
        """List what the store knows (the first page now, the rest streamed), then read the folder."""
        self.close()
        self.project = project
        total = project.image_count()
        # Least confident first: the first page is the most unsure images, so the first image
        # shown is the one the order puts first; the rest streams in whole (known ids are skipped).
        first = project.first_images(FIRST_PAGE, order)
        start = 0 if order and total > len(first) else len(first)
        self.image_list.model.set_records(first, project.root)
        self.image_list.refresh_content()
        self.image_list.set_order(order)
        self.message.emit(f"{total:,} images known; looking for new and changed files…", 0)
        self.show_first()

        stop = self._stop = threading.Event()

        def job(hand_over):
            def give(records: list) -> None:
                if stop.is_set():
                    raise _Stopped
                hand_over(records)

            if total > len(first):
                for chunk in project.iter_images(start, CHUNK):
                    give(chunk)
            result = project.scan(on_new=give)
            # Records the scan changed in place (gone, replaced, back): read here, not on the GUI thread.
            return result, [r for r in map(project.image_by_path, result.touched) if r is not None]

        self.jobs.start(job, lambda r: self._on_scanned(project, *r),
                        lambda e: self._on_scan_failed(project, e),
                        partial=lambda records: self._on_new_files(project, records))

    def close(self) -> None:
        """Stop reading the folder: a running read stops at its next chunk."""
        self._stop.set()
        self.jobs.shutdown()
        self.project = None

    def reload(self) -> None:
        """Everything again from the store (after an import added images or categories)."""
        if self.project is not None:
            self.image_list.model.set_records(self.project.images(), self.project.root)

    def _on_new_files(self, project: Project, records: list) -> None:
        """A chunk of records (stored ones, or files the scan registered): the list grows."""
        if project is not self.project:
            return
        self.image_list.model.append_records(records)
        # The records live as long as the list: out of the collector's way. Otherwise each full
        # collection (the folder read allocates enough to set several off) walks all of them,
        # on whichever thread it falls: 57-146 ms GUI stalls while a new 100k folder was read.
        gc.freeze()
        self.message.emit(f"{self.image_list.model.rowCount():,} images listed so far…", 0)
        self.show_first()

    def show_first(self) -> None:
        if self.project is None or not self.needs_first():
            return
        lst = self.image_list
        first = lst.first() if lst.order.currentData() else \
            next((r.id for r in lst.model.records if r.readable), None)
        if first is not None:
            self.first_image.emit(first)

    def _on_scanned(self, project: Project, result, records: list) -> None:
        if project is not self.project:
            return
        for rec in records:
            self.image_list.model.update_record(rec)
        counts = project.status_counts()
        self.message.emit(
            f"{n_images(sum(counts.values()))}: " + ", ".join(f"{n} {s.value}" for s, n in counts.items() if n)
            + (f" ({result.added} new, {result.missing} gone, {result.changed} changed since last time)"
               if result.added or result.missing or result.changed else ""), 0)
        self.show_first()
        self.scanned.emit(result)

    def _on_scan_failed(self, project: Project, exc: BaseException) -> None:
        if project is self.project:
            self.message.emit(f"Could not read the folder {project.root}: {exc}", 30000)
