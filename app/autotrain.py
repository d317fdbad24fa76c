"""Training while labeling: a background run after every N newly reviewed images.

On by default once the project has a model (trained here, or a starting model); N and the switch
are in Training settings. The run is the Train button's (a child process, so the person keeps
working); the window keeps its model only if the held-out AP is not worse, swaps it in and
re-annotates the images not yet reviewed. The count of reviewed images at the last start is kept
in the project, so it survives restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal

from detector.domain import ImageStatus
from detector.store import Project
from detector.versions import REVIEWED_AT_TRAINING as META_KEY


@dataclass(frozen=True)
class AutoTrainSettings:
    on: bool = True  # train in the background once a model exists ...
    every: int = 10  # ... after every this many newly reviewed images


class AutoTrainer(QObject):
    """``maybe_start()`` after each review; ``status(text)`` says when the next run comes."""

    status = Signal(str)

    def __init__(self, project: Callable[[], Project | None], running: Callable[[], bool],
                 start: Callable[[], None], parent=None):
        super().__init__(parent)
        self.project, self.running, self.start = project, running, start
        self.settings = AutoTrainSettings()

    def enabled(self) -> bool:
        p = self.project()
        return (p is not None and self.settings.on and self.settings.every > 0
                and p.active_model() is not None)

    def reviewed(self) -> int:
        p = self.project()
        return p.status_counts().get(ImageStatus.REVIEWED, 0) if p is not None else 0

    def since_last(self) -> int:
        p = self.project()
        if p is None:
            return 0
        return self.reviewed() - int(p.get_meta(META_KEY) or 0)

    def note_started(self) -> None:
        """Called whenever a run starts (by hand too): the count starts again from here."""
        p = self.project()
        if p is not None:
            p.set_meta(META_KEY, str(self.reviewed()))
        self.announce()

    def announce(self) -> None:
        if not self.enabled():
            self.status.emit("")
            return
        left = self.settings.every - self.since_last()
        if self.running():
            self.status.emit("auto-training now")
        elif left <= 0:  # a starting model, or reviews since a run from before this count was kept
            self.status.emit("auto-train at the next review")
        else:
            self.status.emit(f"auto-train after {left} more reviewed image{'s' if left != 1 else ''}")

    def maybe_start(self) -> bool:
        """Start a run if N images were reviewed since the last one and none is running."""
        if self.enabled() and not self.running() and self.since_last() >= self.settings.every:
            self.start()
            return True
        self.announce()
        return False
