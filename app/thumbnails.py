"""Thumbnails for the image list, decoded lazily off the GUI thread.

The list view asks for a row's icon only when the row is on screen; the first ask queues a
reduced-scale decode on a one-thread pool and the row is repainted when it answers. A folder of
10,000 images costs nothing until its rows are scrolled into view.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from PySide6.QtCore import QObject, QThreadPool, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap

from detector.images import ImageReadError, load_thumbnail, stretch_contrast

from .tasks import Delivery, Task

THUMB_SIZE = 48


def _thumbnail(path: Path, size: int, stretch: bool = False) -> QImage | None:
    try:
        rgb = load_thumbnail(path, size)
        if stretch:
            rgb = stretch_contrast(rgb)
    except ImageReadError:  # an unreadable file has no thumbnail (the loader says why)
        return None
    except Exception:  # never let a pool thread die silently; the row just stays plain
        return None
    h, w = rgb.shape[:2]
    # QImage over the array's buffer, then copied so it owns its pixels.
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class ThumbnailCache(QObject):
    """``icon(image_id, path)`` returns a cached icon or None and queues a decode; ``ready(id)``."""

    ready = Signal(int)

    def __init__(self, parent=None, size: int = THUMB_SIZE, capacity: int = 2000):
        super().__init__(parent)
        self.size, self.capacity = size, capacity
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(1)  # never competes with the image loader for both cores
        self._signals = Delivery(self)  # (image id, stretched, QImage or None)
        self._signals.done.connect(self._on_done)
        self._icons: OrderedDict[int, QIcon | None] = OrderedDict()
        self._pending: set[int] = set()
        self.requested = 0  # decodes queued so far (the tests check laziness with it)
        self.stretch = False  # auto contrast, as the canvas shows the image

    def icon(self, image_id: int, path: Path) -> QIcon | None:
        if image_id in self._icons:
            self._icons.move_to_end(image_id)
            return self._icons[image_id]
        if image_id not in self._pending:
            self._pending.add(image_id)
            self.requested += 1
            stretch = self.stretch
            self.pool.start(Task(lambda: (image_id, stretch, _thumbnail(path, self.size, stretch)),
                                 self._signals.done.emit))
        return None

    def forget(self, image_id: int) -> None:
        """Drop a stale thumbnail (the file changed); the next paint asks again."""
        self._icons.pop(image_id, None)

    def clear(self) -> None:
        self.pool.clear()
        self._icons.clear()
        self._pending.clear()

    def set_stretch(self, on: bool) -> None:
        """Thumbnails with auto contrast or as stored: those made the other way are dropped."""
        if on != self.stretch:
            self.stretch = on
            self.clear()

    def _on_done(self, answer: tuple[int, bool, QImage | None]) -> None:
        image_id, stretched, image = answer
        if image_id not in self._pending or stretched != self.stretch:  # cleared meanwhile
            return
        self._pending.discard(image_id)
        self._icons[image_id] = QIcon(QPixmap.fromImage(image)) if image is not None else None
        while len(self._icons) > self.capacity:
            self._icons.popitem(last=False)
        self.ready.emit(image_id)

    def shutdown(self) -> None:
        self.pool.clear()
        self.pool.waitForDone(5000)
