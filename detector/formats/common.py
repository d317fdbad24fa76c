"""Helpers the formats share: finding a project image by a file name another tool wrote, and
checking numbers."""

from __future__ import annotations

import math
import posixpath
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..coco import _PlannedImage
from ..domain import Category, Instance
from ..images import ImageReadError, read_size, scan_folder
from . import FormatError

IMPORTED_BY = "import"


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class ImageIndex:
    """Project images by path, by name and by stem (other tools write 'images/train/x.jpg',
    'C:\\data\\x.jpg' or just 'x'); an ambiguous or missing name is an error naming the file."""

    def __init__(self, root: Path, source: str):
        self.root, self.source = Path(root), source
        self.paths = {p for p, _mtime, _size in scan_folder(root)}
        self.by_name: dict[str, list[str]] = {}
        self.by_stem: dict[str, list[str]] = {}
        for p in self.paths:
            name = posixpath.basename(p)
            self.by_name.setdefault(name, []).append(p)
            self.by_stem.setdefault(PurePosixPath(name).stem, []).append(p)
        self.sizes: dict[str, tuple[int, int]] = {}

    def find(self, reference: str, where: str, *, stem: bool = False) -> str:
        ref = reference.replace("\\", "/")
        if ref in self.paths:
            return ref
        name = PureWindowsPath(reference).name if "\\" in reference else posixpath.basename(ref)
        table, key = (self.by_stem, PurePosixPath(name).stem) if stem else (self.by_name, name)
        found = table.get(key, [])
        if not found:
            raise FormatError(f"{self.source}: {where}: no image {reference!r} under {self.root}")
        if len(found) > 1:
            raise FormatError(f"{self.source}: {where}: {reference!r} matches several images "
                              f"({', '.join(found[:3])})")
        return found[0]

    def planned(self, rel: str, where: str) -> _PlannedImage:
        if rel not in self.sizes:
            try:
                self.sizes[rel] = read_size(self.root / rel)
            except ImageReadError as exc:
                raise FormatError(f"{self.source}: {where}: {rel}: {exc.reason}") from exc
        w, h = self.sizes[rel]
        return _PlannedImage(rel, w, h)


def person_instance(box, mask=None, keypoints=(), crowd: bool = False) -> Instance:
    return Instance(category_id=-1, box=tuple(float(v) for v in box), mask=mask, keypoints=tuple(keypoints),
                    crowd=crowd, source="person", changed_by=IMPORTED_BY)


def category_like(existing: dict[str, Category], name: str, keypoints: tuple[str, ...] = ()) -> Category:
    """The project's category of that name, or a new one (keeping the project's keypoint names)."""
    old = existing.get(name)
    if old is not None:
        return Category(old.name, old.color, old.keypoints or keypoints, old.skeleton)
    return Category(name, keypoints=keypoints)


def exported_records(project, reviewed_only: bool):
    """The readable images an export writes, with their instances (reviewed-only drops unaccepted
    model guesses), as COCO export chooses them."""
    from ..domain import ImageStatus

    statuses = [ImageStatus.REVIEWED] if reviewed_only else [s for s in ImageStatus if s is not ImageStatus.UNREADABLE]
    out = []
    for rec in project.images(statuses):
        rec = project.ensure_size(rec)
        if not rec.readable:
            continue
        insts = [i for i in project.instances(rec.id)
                 if not (i.changed_by == "model" and not i.accepted and reviewed_only)]
        out.append((rec, insts))
    return out
