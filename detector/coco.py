"""COCO JSON export and all-or-nothing import (see shared/COCO.md for the rules).

Inside Loupe boxes are ``[x1, y1, x2, y2]``; COCO's ``[x, y, w, h]`` exists only in this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import masks as M
from .domain import Category, ImageRecord, ImageStatus, Instance
from .coco_reader import IMPORTED_BY, CocoError, _PlannedImage, plan_import, read_json  # noqa: F401 (re-exported)



# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _xywh(box: Iterable[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def _segmentation(inst: Instance, h: int, w: int, polygons: bool) -> tuple[Any, float]:
    if inst.mask is None:
        x1, y1, x2, y2 = inst.box
        return [[x1, y1, x2, y1, x2, y2, x1, y2]], max(0.0, (x2 - x1) * (y2 - y1))
    area = float(M.area(inst.mask))
    if polygons and not inst.crowd:
        polys = M.rle_to_polygons(inst.mask)
        if polys:
            return polys, area
    return M.compress(inst.mask), area


def build_coco(images: list[ImageRecord], categories: list[Category],
               instances: Mapping[int, list[Instance]], *, polygons: bool = False) -> dict:
    """A COCO dict with ids from 1; ``instances`` maps image id to that image's instances."""
    cat_ids = {c.id: i + 1 for i, c in enumerate(categories)}
    cats_by_id = {c.id: c for c in categories}
    out_cats = []
    for c in categories:
        entry: dict[str, Any] = {"id": cat_ids[c.id], "name": c.name, "supercategory": c.name}
        if c.keypoints:
            entry["keypoints"] = list(c.keypoints)
            entry["skeleton"] = [list(p) for p in c.skeleton]
        out_cats.append(entry)
    out_images, out_anns = [], []
    ann_id = 0
    for img_id, rec in enumerate(images, start=1):
        out_images.append({"id": img_id, "file_name": rec.path, "width": rec.width,
                           "height": rec.height})
        for inst in instances.get(rec.id, []):
            seg, area = _segmentation(inst, rec.height, rec.width, polygons)
            ann_id += 1
            ann: dict[str, Any] = {
                "id": ann_id, "image_id": img_id, "category_id": cat_ids[inst.category_id],
                "bbox": _xywh(inst.box), "area": area, "iscrowd": int(inst.crowd),
                "segmentation": seg,
            }
            cat = cats_by_id[inst.category_id]
            if cat.keypoints:
                k = len(cat.keypoints)
                kps = list(inst.keypoints)[:k] + [(0.0, 0.0, 0)] * max(0, k - len(inst.keypoints))
                flat: list[float] = []
                for x, y, v in kps:
                    flat += [0, 0, 0] if v == 0 else [round(float(x), 2), round(float(y), 2), int(v)]
                ann["keypoints"] = flat
                ann["num_keypoints"] = sum(1 for _, _, v in kps if v > 0)
            if inst.score is not None:
                ann["score"] = round(float(inst.score), 4)
            out_anns.append(ann)
    return {
        "info": {"description": "Exported by Loupe", "version": "1",
                 "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "licenses": [],
        "images": out_images,
        "annotations": out_anns,
        "categories": out_cats,
    }


def write_json_atomic(data: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def export_project(project, out: str | os.PathLike | None = None, *, polygons: bool = False,
                   reviewed_only: bool = False) -> dict:
    """Export the project's readable images (or only reviewed ones) as COCO; write if ``out``."""
    statuses = [ImageStatus.REVIEWED] if reviewed_only else [
        s for s in ImageStatus if s is not ImageStatus.UNREADABLE]
    records = []
    for rec in project.images(statuses):
        rec = project.ensure_size(rec)
        if rec.readable:
            records.append(rec)
    instances = {rec.id: [i for i in project.instances(rec.id)
                          if not (i.changed_by == "model" and not i.accepted and reviewed_only)]
                 for rec in records}
    data = build_coco(records, project.categories(), instances, polygons=polygons)
    if out is not None:
        write_json_atomic(data, out)
        # the ids this file gave, so that detection results computed on it can come back
        project.set_meta("last_coco_export", json.dumps({
            "images": {im["id"]: im["file_name"] for im in data["images"]},
            "categories": {c["id"]: c["name"] for c in data["categories"]}}))
    return data


# --------------------------------------------------------------------------------------------
# Writing a validated import (reading and validating: coco_reader.py)
# --------------------------------------------------------------------------------------------
@dataclass
class ImportReport:
    """What an import did and every quirk it normalised."""

    images: int = 0
    annotations: int = 0
    categories_added: list[str] = field(default_factory=list)
    skipped_duplicates: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"imported {self.annotations} annotations on {self.images} images"
                 + (f", new categories: {', '.join(self.categories_added)}"
                    if self.categories_added else "")]
        if self.skipped_duplicates:
            lines.append(f"skipped {self.skipped_duplicates} annotations already in the project")
        lines += [f"normalised: {n}" for n in self.notes]
        return "\n".join(lines)


def _same(a: Instance, b: Instance) -> bool:
    return (a.category_id == b.category_id and a.crowd == b.crowd
            and np.allclose(a.box, b.box, atol=0.01)
            and (a.mask or {}).get("counts") == (b.mask or {}).get("counts")
            and a.keypoints == b.keypoints)


def import_coco(project, coco_path: str | os.PathLike, *,
                status: ImageStatus = ImageStatus.REVIEWED) -> ImportReport:
    """Import a COCO file into the project in one transaction: all of it, or nothing."""
    data = read_json(coco_path)
    categories, images, notes, _ = plan_import(data, str(coco_path), project.root)
    return apply_plan(project, str(coco_path), categories, images, notes, status=status)


def apply_plan(project, source: str, categories: Mapping[Any, Category], images: Mapping[Any, _PlannedImage],
               notes: list[str], *, status: ImageStatus = ImageStatus.REVIEWED) -> ImportReport:
    """Write a validated import (any format's) into the project in one transaction."""
    coco_path = source
    existing = {c.name: c for c in project.categories()}
    for c in categories.values():
        old = existing.get(c.name)
        if old is not None and c.keypoints and old.keypoints and tuple(old.keypoints) != c.keypoints:
            raise CocoError(f"{coco_path}: category {c.name!r} has keypoints {list(c.keypoints)} "
                            f"but the project's has {list(old.keypoints)}")
    report = ImportReport(notes=notes)
    with project.transaction():
        ids: dict[str, int] = {}
        for c in categories.values():
            old = existing.get(c.name)
            if old is None:
                old = project.add_category(c)
                report.categories_added.append(c.name)
            elif c.keypoints and not old.keypoints:
                old = project.update_category(Category(old.name, old.color, c.keypoints,
                                                       c.skeleton, old.id))
            ids[c.name] = old.id
        for planned in images.values():
            rec = project.image_by_path(planned.path)
            if rec is None:
                rec = project.add_image(planned.path, planned.width, planned.height)
            elif not rec.width:
                project.set_size(rec.id, planned.width, planned.height)
            current = project.instances(rec.id)
            if planned.instances:
                # The file's labels replace the model's unreviewed guesses on that image.
                for inst in current:
                    if not inst.touched_by_person:
                        project.delete_instance(inst.id)
                current = [i for i in current if i.touched_by_person]
            for name, inst in planned.instances:
                inst = inst.with_(category_id=ids[name], image_id=rec.id)
                if any(_same(inst, old) for old in current):
                    report.skipped_duplicates += 1
                    continue
                project.add_instance(inst, by=IMPORTED_BY)
                report.annotations += 1
            # Listed in the file means labelled, even with no objects (a negative example).
            project.set_status(rec.id, status)
            report.images += 1
    return report
