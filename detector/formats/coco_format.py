"""COCO instances JSON (the default), and COCO detection *results* imported as predictions."""

from __future__ import annotations

import os
from pathlib import Path

from .. import masks as M
from ..coco import export_project, plan_import, read_json
from . import Format, FormatError, Plan, register


def _detect(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".json"


def _read(path: Path, project) -> Plan:
    categories, images, notes, _ = plan_import(read_json(path), str(path), project.root)
    return Plan({c.name: c for c in categories.values()}, dict(images), notes)


def _write(project, out: Path, *, reviewed_only: bool = False, polygons: bool = False) -> str:
    data = export_project(project, out, polygons=polygons, reviewed_only=reviewed_only)
    return (f"wrote {out}: {len(data['images'])} images, {len(data['annotations'])} annotations, "
            f"{len(data['categories'])} categories")


register(Format("coco", "COCO instances JSON: boxes, masks (RLE, or polygons), keypoints with names and skeleton",
                _detect, _read, _write, suffix="*.json"))


# --------------------------------------------------------------------------------------------
# COCO detection results: a list of {image_id, category_id, bbox, segmentation?, keypoints?, score}
# --------------------------------------------------------------------------------------------
def id_maps(project, gt: Path | None) -> tuple[dict, dict, str]:
    """(image id -> project path, category id -> name, where they came from)."""
    import json as _json

    if gt is not None:
        categories, images, _, _ = plan_import(read_json(gt), str(gt), project.root)
        return ({k: im.path for k, im in images.items()}, {k: c.name for k, c in categories.items()}, str(gt))
    raw = project.get_meta("last_coco_export")
    if not raw:
        raise FormatError("results refer to image and category ids: give the dataset file they refer to "
                          "(--gt DATASET.json), or export COCO from this project first")
    d = _json.loads(raw)
    return ({int(k): v for k, v in d["images"].items()}, {int(k): v for k, v in d["categories"].items()},
            "the project's last COCO export")


def read_results(path: Path, project, gt: Path | None = None):
    """Validate a results file whole; returns {project path: [(category name, Instance)]}."""
    from ..coco_reader import _Reader
    from ..domain import MODEL, Instance

    data = read_json(path)
    if not isinstance(data, list):
        raise FormatError(f"{path}: detection results are a JSON list of detections")
    images, names, origin = id_maps(project, gt)
    by_image: dict[str, list] = {}
    reader = _Reader({}, str(path), project.root)
    sizes: dict[str, tuple[int, int]] = {}
    for i, r in enumerate(data):
        where = f"[{i}]"
        if not isinstance(r, dict):
            raise FormatError(f"{path}: {where}: expected an object")
        rel = images.get(r.get("image_id"))
        if rel is None:
            raise FormatError(f"{path}: {where}: image_id {r.get('image_id')!r} is not in {origin}")
        name = names.get(r.get("category_id"))
        if name is None:
            raise FormatError(f"{path}: {where}: category_id {r.get('category_id')!r} is not in {origin}")
        score = r.get("score")
        if not isinstance(score, (int, float)) or isinstance(score, bool) or not 0 <= score <= 1:
            raise FormatError(f"{path}: {where}: 'score' must be a number from 0 to 1")
        rec = project.image_by_path(rel)
        if rec is None:
            raise FormatError(f"{path}: {where}: {rel} is not in the project")
        if rel not in sizes:
            rec = project.ensure_size(rec)
            sizes[rel] = (rec.height, rec.width)
        h, w = sizes[rel]
        mask = reader.mask(r.get("segmentation"), where, h, w) if r.get("segmentation") else None
        bbox = r.get("bbox")
        if bbox is not None:
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                raise FormatError(f"{path}: {where}: 'bbox' must be [x, y, width, height]")
            box = (bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3])
        elif mask is not None:
            box = M.bbox_xyxy(mask)
        else:
            raise FormatError(f"{path}: {where}: has neither 'bbox' nor 'segmentation'")
        kps = r.get("keypoints") or []
        if kps and (len(kps) % 3 or not all(isinstance(v, (int, float)) for v in kps)):
            raise FormatError(f"{path}: {where}: 'keypoints' must be x, y, v triples")
        points = tuple((float(kps[j]), float(kps[j + 1]), 2 if kps[j + 2] > 0 else 0) for j in range(0, len(kps), 3))
        by_image.setdefault(rel, []).append((name, Instance(
            category_id=-1, box=tuple(float(v) for v in box), mask=mask, keypoints=points,
            score=round(float(score), 4), source=MODEL, changed_by=MODEL)))
    return by_image


def import_results(project, path: str | os.PathLike, gt: str | os.PathLike | None = None) -> str:
    """Results as *model predictions* with their scores, all or nothing: categories and images by
    name, never over a person's edits, never on a reviewed image."""
    from ..domain import Category

    path = Path(path)
    by_image = read_results(path, project, Path(gt) if gt else None)
    cats = {c.name: c for c in project.categories()}
    n = 0
    with project.transaction():
        for names in by_image.values():
            for name, _ in names:
                if name not in cats:
                    cats[name] = project.ensure_category(Category(name))
        for rel, pairs in by_image.items():
            rec = project.image_by_path(rel)
            kp_len = {c.name: len(c.keypoints) for c in cats.values()}
            insts = []
            for name, inst in pairs:
                k = kp_len[name]
                kps = inst.keypoints[:k] + ((0.0, 0.0, 0),) * max(0, k - len(inst.keypoints)) if k else ()
                insts.append(inst.with_(category_id=cats[name].id, keypoints=kps))
            insts.sort(key=lambda i: -(i.score or 0))
            n += len(project.replace_predictions(rec.id, insts))
    return f"imported {n} detections on {len(by_image)} images as predictions (scores kept)"


def _detect_results(path: Path) -> bool:
    if not (path.is_file() and path.suffix.lower() == ".json"):
        return False
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return head.startswith(b"[")


register(Format("results", "COCO detection results (a list with scores, as detectron2, mmdetection or pycocotools "
                           "write them): imported as model predictions, ids from --gt DATASET.json",
                _detect_results, None, None, suffix="*.json"))
