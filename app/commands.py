"""One QUndoCommand per kind of edit. Each redo/undo writes to the project store at once."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtGui import QUndoCommand

from detector.domain import ImageStatus, Instance
from detector.store import Project, ProjectError

Refresh = Callable[[], None]


class _Command(QUndoCommand):
    """Runs ``_redo``/``_undo``; a failed write (disk full, read-only) is reported, never half-kept.

    A command whose first redo fails marks itself obsolete, so QUndoStack drops it: the stack
    never holds an edit the store does not have.
    """

    def __init__(self, project: Project, refresh: Refresh, text: str):
        super().__init__(text)
        self.project, self.refresh = project, refresh
        self.error: str | None = None
        self._done_once = False

    def redo(self) -> None:
        try:
            with self.project.transaction():  # a command's writes land together or not at all
                self._redo()
            self.error = None
        except ProjectError as exc:
            self.error = str(exc)
            if not self._done_once:
                self.setObsolete(True)
        else:
            self._done_once = True
        self.refresh()

    def undo(self) -> None:
        try:
            with self.project.transaction():
                self._undo()
            self.error = None
        except ProjectError as exc:
            self.error = str(exc)
        self.refresh()


class AddInstances(_Command):
    """Add new instances (a drawn box, polygon, painted mask, duplicate)."""

    def __init__(self, project, refresh, instances: list[Instance], text: str = "Add instance"):
        super().__init__(project, refresh, text)
        self.pending = list(instances)
        self.stored: list[Instance] = []

    def _redo(self) -> None:
        if not self.stored:
            self.stored = [self.project.add_instance(i) for i in self.pending]
        else:
            for i in self.stored:
                self.project.restore_instance(i)

    def _undo(self) -> None:
        for i in self.stored:
            self.project.delete_instance(i.id)


class SplitInstance(_Command):
    """A Click tool click inside an instance: the instance keeps ``rest`` (its part away from the
    click) and ``new`` (the part around the click) is added; one step to undo."""

    def __init__(self, project, refresh, before: Instance, rest: Instance, new: Instance,
                 text: str = "Split (click)"):
        super().__init__(project, refresh, text)
        self.before, self.rest, self.new = before, rest, new
        self.stored: Instance | None = None

    def _redo(self) -> None:
        self.project.update_instance(self.rest)
        if self.stored is None:
            self.stored = self.project.add_instance(self.new)
        else:
            self.project.restore_instance(self.stored)

    def _undo(self) -> None:
        self.project.delete_instance(self.stored.id)
        self.project.update_instance(self.before, by=self.before.changed_by)


class DeleteInstances(_Command):
    def __init__(self, project, refresh, instances: list[Instance], text: str = "Delete"):
        super().__init__(project, refresh, text)
        self.instances = list(instances)

    def _redo(self) -> None:
        for i in self.instances:
            self.project.delete_instance(i.id)

    def _undo(self) -> None:
        for i in self.instances:
            self.project.restore_instance(i)


class EditInstances(_Command):
    """Any change to existing instances: move, resize, paint, erase, keypoints, category, accept.

    Consecutive edits with the same ``merge_key`` on the same instances merge into one step
    (e.g. repeated arrow-key nudges); a mouse drag is already one edit on release.
    """

    def __init__(self, project, refresh, pairs: list[tuple[Instance, Instance]], text: str,
                 merge_key: int = -1):
        super().__init__(project, refresh, text)
        self.pairs = list(pairs)
        self.merge_key = merge_key

    def id(self) -> int:  # noqa: A003 (Qt's name)
        return self.merge_key

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802
        if not isinstance(other, EditInstances) or other.merge_key != self.merge_key or self.merge_key < 0:
            return False
        if [a.id for a, _ in self.pairs] != [a.id for a, _ in other.pairs]:
            return False
        self.pairs = [(a, b2) for (a, _), (_, b2) in zip(self.pairs, other.pairs)]
        return True

    def _redo(self) -> None:
        for _, after in self.pairs:
            self.project.update_instance(after)

    def _undo(self) -> None:
        for before, _ in self.pairs:
            # Undo gives the instance back exactly, its owner included (a prediction stays one).
            self.project.update_instance(before, by=before.changed_by)


class SetImageStatus(_Command):
    def __init__(self, project, refresh, image_id: int, status: ImageStatus, text: str = "Mark reviewed"):
        super().__init__(project, refresh, text)
        self.image_id, self.status = image_id, status
        self.before = project.image(image_id).status

    def _redo(self) -> None:
        self.project.set_status(self.image_id, self.status)

    def _undo(self) -> None:
        self.project.set_status(self.image_id, self.before)
