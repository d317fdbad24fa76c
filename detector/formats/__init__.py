"""Annotation formats people move between: one registry, read by the CLI and the File menu.

Each format reads a file or folder into a *plan* (categories, and per image its instances by
category name), validated whole before anything is written, then ``coco.apply_plan`` writes it
in one transaction; and each writes a project out. COCO is the first entry; adding a format is one
module and one ``register`` call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..coco import CocoError, _PlannedImage, apply_plan
from ..domain import Category, ImageStatus

FormatError = CocoError  # one error type for every rejected file: a line naming the file and the problem


@dataclass
class Plan:
    """A validated import: categories by name, and per image path its (category name, instance) pairs."""

    categories: dict[str, Category] = field(default_factory=dict)
    images: dict[str, _PlannedImage] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Format:
    name: str
    description: str  # what it carries, for the README, --help and the File menu
    detect: Callable[[Path], bool]  # is this path in this format?
    read: Callable[[Path, Any], Plan]  # (path, project) -> Plan; raises FormatError
    write: Callable[..., str]  # (project, out, *, reviewed_only, **options) -> a summary line
    suffix: str = ""  # file name filter for a save dialog ("" = a folder)


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def detect(path: str | os.PathLike) -> str:
    """The format a file or folder is in, when that is unambiguous; COCO otherwise."""
    p = Path(path)
    for name, fmt in FORMATS.items():
        if name != "coco" and fmt.detect(p):
            return name
    return "coco"


def import_file(project, path: str | os.PathLike, fmt: str | None = None, *,
                status: ImageStatus = ImageStatus.REVIEWED, gt: str | os.PathLike | None = None) -> str:
    """Import any registered format, all or nothing; returns what was done, in words.

    ``results`` (COCO detection results) become model predictions; ``gt`` is the dataset file
    their ids refer to.
    """
    name = fmt or detect(path)
    if name not in FORMATS:
        raise FormatError(f"{path}: unknown format {name!r} (known: {', '.join(FORMATS)})")
    if name == "results":
        from .coco_format import import_results

        return import_results(project, path, gt)
    plan = FORMATS[name].read(Path(path), project)
    report = apply_plan(project, str(path), plan.categories, plan.images, plan.notes, status=status)
    return report.summary()


def export_file(project, out: str | os.PathLike, fmt: str = "coco", **options) -> str:
    if fmt not in FORMATS or FORMATS[fmt].write is None:
        raise FormatError(f"{out}: unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    return FORMATS[fmt].write(project, Path(out), **options)


from . import coco_format, yolo, voc, labelme  # noqa: E402,F401  (each registers itself)

# results are recognised before plain COCO (a JSON list rather than an object)
FORMATS["results"] = FORMATS.pop("results")
