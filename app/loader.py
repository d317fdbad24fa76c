"""Decodes images off the GUI thread, keeps a small cache and prefetches neighbours."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QThreadPool, Signal

from detector.images import ImageReadError, load_image, stretch_contrast

from .tasks import Delivery, Task


@dataclass(frozen=True)
class LoadedImage:
    request_id: int
    image_id: int
    rgb: np.ndarray | None
    error: str | None = None
    stretched: bool = False  # contrast stretched for the screen (auto contrast)


def _load(request_id: int, image_id: int, path: Path, stretch: bool = False) -> LoadedImage:
    try:
        rgb = load_image(path)
        return LoadedImage(request_id, image_id, stretch_contrast(rgb) if stretch else rgb, stretched=stretch)
    except ImageReadError as exc:
        return LoadedImage(request_id, image_id, None, str(exc))
    except Exception as exc:  # never let a worker die silently
        return LoadedImage(request_id, image_id, None, f"{path}: {exc}")


class ImageLoader(QObject):
    """``request(image_id, path)`` answers through ``loaded`` (from cache at once when it can).

    ``stretch``: images come with their contrast stretched for the screen (``set_stretch``)."""

    loaded = Signal(object)  # LoadedImage

    def __init__(self, parent=None, cache_size: int = 12):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(2)
        self._signals = Delivery(self)  # LoadedImage
        self._signals.done.connect(self._on_done)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._pending: set[int] = set()
        self._cache_size = cache_size
        self._next_id = 0
        self.latest_request = -1
        self.stretch = False

    def set_stretch(self, on: bool) -> None:
        """Show images stretched (auto contrast) or as stored; the cache holds the other kind."""
        if on != self.stretch:
            self.stretch = on
            self._cache.clear()

    def request(self, image_id: int, path: Path) -> int:
        self._next_id += 1
        rid = self._next_id
        self.latest_request = rid
        if image_id in self._cache:
            self._cache.move_to_end(image_id)
            self.loaded.emit(LoadedImage(rid, image_id, self._cache[image_id], stretched=self.stretch))
        else:
            stretch = self.stretch
            self.pool.start(Task(lambda: _load(rid, image_id, path, stretch), self._signals.done.emit))
        return rid

    def prefetch(self, image_id: int, path: Path) -> None:
        if image_id not in self._cache and image_id not in self._pending:
            self._pending.add(image_id)
            stretch = self.stretch
            self.pool.start(Task(lambda: _load(0, image_id, path, stretch), self._signals.done.emit))

    def cached(self, image_id: int) -> np.ndarray | None:
        return self._cache.get(image_id)

    def _on_done(self, result: LoadedImage) -> None:
        self._pending.discard(result.image_id)
        if result.rgb is not None and result.stretched == self.stretch:  # not one from before a toggle
            self._cache[result.image_id] = result.rgb
            self._cache.move_to_end(result.image_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if result.request_id:
            self.loaded.emit(result)

    def shutdown(self) -> None:
        self.pool.clear()
        self.pool.waitForDone(5000)
