"""labelme JSON: one file per image with its shapes (the format of the most used desktop tool).

Read: ``polygon`` (a mask), ``rectangle`` (a box), ``circle`` (a mask), ``mask`` (labelme 5's
base64 PNG inside a box) and ``point`` shapes; shapes sharing a ``group_id`` and label are one
object (parts, and its keypoints: a point's label is the keypoint's name). ``line`` and
``linestrip`` have no Loupe meaning and are reported, not imported. Embedded ``imageData`` is
ignored (the project's own file is used).
Written: a polygon per part (holes joined to their ring by a zero-width cut, so the polygon fills
back to the same pixels), a rectangle for an object without a mask, a point per labelled
keypoint, and a ``group_id`` tying them together; ``imagePath`` points at the project's image.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path, PurePosixPath

import numpy as np

from .. import masks as M
from ..domain import Category
from . import Format, FormatError, Plan, register
from .common import ImageIndex, category_like, exported_records, is_num, person_instance

MASK_SHAPES = ("polygon", "circle", "mask")


def _is_labelme(f: Path) -> bool:
    try:
        if f.stat().st_size > 200 * 2**20:
            return False
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "shapes" in data and "imagePath" in data


def _detect(path: Path) -> bool:
    files = [path] if path.is_file() else sorted(path.glob("*.json"))[:5] if path.is_dir() else []
    return any(_is_labelme(f) for f in files)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(f for f in path.rglob("*.json") if not any(p.startswith(".") for p in f.relative_to(path).parts))
    return [f for f in files if _is_labelme(f)]


def _points(shape: dict, where: str) -> np.ndarray:
    pts = shape.get("points")
    if not (isinstance(pts, list) and pts and all(isinstance(p, list) and len(p) == 2 and all(is_num(v) for v in p)
                                                  for p in pts)):
        raise FormatError(f"{where}: 'points' must be a list of [x, y]")
    return np.array(pts, dtype=np.float64)


def _shape_mask(shape: dict, kind: str, pts: np.ndarray, h: int, w: int, where: str):
    if kind == "polygon":
        if len(pts) < 3:
            raise FormatError(f"{where}: a polygon needs 3 points or more")
        return M.from_polygons([pts.reshape(-1).tolist()], h, w)
    if kind == "circle":
        if len(pts) != 2:
            raise FormatError(f"{where}: a circle is its centre and a point on it")
        (cx, cy), (px, py) = pts
        r = math.hypot(px - cx, py - cy)
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return M.from_polygons([np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).reshape(-1).tolist()], h, w)
    # labelme 5 "mask": a PNG of the box given by the two points
    from PIL import Image

    try:
        crop = np.array(Image.open(io.BytesIO(base64.b64decode(shape.get("mask") or ""))).convert("L")) > 0
    except Exception as exc:
        raise FormatError(f"{where}: 'mask' is not a base64 PNG ({exc})") from exc
    x0, y0 = (int(round(v)) for v in pts.min(0))
    full = np.zeros((h, w), np.uint8)
    ch, cw = crop.shape
    full[max(0, y0):min(h, y0 + ch), max(0, x0):min(w, x0 + cw)] = \
        crop[max(0, -y0):max(0, -y0) + min(h, y0 + ch) - max(0, y0),
             max(0, -x0):max(0, -x0) + min(w, x0 + cw) - max(0, x0)]
    return M.encode(full)


def _read(path: Path, project) -> Plan:
    files = _files(path)
    if not files:
        raise FormatError(f"{path}: no labelme .json files")
    existing = {c.name: c for c in project.categories()}
    index = ImageIndex(project.root, str(path))
    plan = Plan()
    kp_names: dict[str, list[str]] = {}
    skipped = 0
    objects_per_file = []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{f}: not readable JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
            raise FormatError(f"{f}: not a labelme file (no 'shapes' list)")
        ref = data.get("imagePath")
        if not isinstance(ref, str) or not ref:
            raise FormatError(f"{f}: 'imagePath' must name the image")
        target = (f.parent / ref.replace("\\", "/")).resolve()
        try:
            rel = target.relative_to(Path(project.root).resolve()).as_posix()
            rel = rel if rel in index.paths else index.find(ref, f.name)
        except ValueError:
            rel = index.find(ref, f.name)
        img = plan.images.get(rel) or index.planned(rel, f.name)
        plan.images[rel] = img
        h, w = img.height, img.width
        if (data.get("imageHeight"), data.get("imageWidth")) not in ((None, None), (h, w)):
            raise FormatError(f"{f}: says {data.get('imageWidth')}x{data.get('imageHeight')} but {rel} is {w}x{h}")
        groups: dict = {}
        order = []
        for i, shape in enumerate(data["shapes"]):
            where = f"{f}: shapes[{i}]"
            if not isinstance(shape, dict) or not isinstance(shape.get("label"), str) or not shape["label"]:
                raise FormatError(f"{where}: needs a 'label'")
            kind = shape.get("shape_type") or "polygon"
            if kind in ("line", "linestrip"):
                skipped += 1
                continue
            if kind not in ("polygon", "rectangle", "circle", "mask", "point"):
                raise FormatError(f"{where}: unknown shape_type {kind!r}")
            pts = _points(shape, where)
            gid = shape.get("group_id")
            if kind == "point":
                if gid is None:
                    raise FormatError(f"{where}: a point needs the group_id of the object it belongs to")
                groups.setdefault(("points", gid), []).append((shape["label"], pts[0], where))
                continue
            key = (shape["label"], gid) if gid is not None else (shape["label"], ("alone", i))
            if key not in groups:
                order.append(key)
            groups.setdefault(key, []).append((kind, pts, shape, where))
        objects = []
        for key in order:
            label, gid = key
            masks, boxes = [], []
            for kind, pts, shape, where in groups[key]:
                if kind == "rectangle":
                    if len(pts) != 2:
                        raise FormatError(f"{where}: a rectangle is two corners")
                    (xa, ya), (xb, yb) = pts
                    boxes.append((min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)))
                else:
                    masks.append(_shape_mask(shape, kind, pts, h, w, where))
            mask = None
            if masks:
                from pycocotools import mask as mu

                mask = M.compress(mu.merge([M.to_pycocotools(m) for m in masks])) if len(masks) > 1 else masks[0]
                boxes.append(M.bbox_xyxy(mask))
            box = (min(b[0] for b in boxes), min(b[1] for b in boxes),
                   max(b[2] for b in boxes), max(b[3] for b in boxes))
            points = groups.get(("points", gid), []) if not isinstance(gid, tuple) else []
            for name, _p, _w in points:
                names = kp_names.setdefault(label, [])
                if name not in names:
                    names.append(name)
            objects.append((label, box, mask, points))
            plan.categories.setdefault(label, category_like(existing, label))
        point_groups = {g for (kind, g) in groups if kind == "points"}
        used = {gid for (_label, gid) in order if not isinstance(gid, tuple)}
        if point_groups - used:
            raise FormatError(f"{f}: points with group_id {sorted(point_groups - used)[0]!r} belong to no shape")
        objects_per_file.append((img, objects))
    # keypoint schemas: the project's where the category exists, else the names in order of appearance
    for label, names in kp_names.items():
        cat = plan.categories[label]
        if cat.keypoints and not set(names) <= set(cat.keypoints):
            raise FormatError(f"{path}: keypoints {sorted(set(names) - set(cat.keypoints))} are not "
                              f"{label!r}'s in the project ({', '.join(cat.keypoints)})")
        if not cat.keypoints:
            plan.categories[label] = Category(cat.name, cat.color, tuple(names), cat.skeleton)
    for img, objects in objects_per_file:
        for label, box, mask, points in objects:
            names = plan.categories[label].keypoints
            kps = [(0.0, 0.0, 0)] * len(names)
            for name, (x, y), _where in points:
                kps[names.index(name)] = (float(x), float(y), 2)
            img.instances.append((label, person_instance(box, mask, tuple(kps))))
    if skipped:
        plan.notes.append(f"line and linestrip shapes not imported ({skipped}): Loupe has no such objects")
    return plan


def _write(project, out: Path, *, reviewed_only: bool = False) -> str:
    cats = {c.id: c for c in project.categories()}
    records = exported_records(project, reviewed_only)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for rec, insts in records:
        dest = out / PurePosixPath(rec.path).with_suffix(".json")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shapes = []
        for gid, inst in enumerate(insts, 1):
            cat = cats.get(inst.category_id)
            if cat is None:
                continue
            base = {"label": cat.name, "group_id": gid, "description": "", "flags": {}}
            polys = M.rle_to_polygons(inst.mask) if inst.mask is not None else []
            if polys:
                for p in polys:
                    shapes.append({**base, "points": np.array(p).reshape(-1, 2).tolist(), "shape_type": "polygon"})
            else:
                x1, y1, x2, y2 = inst.box
                shapes.append({**base, "points": [[x1, y1], [x2, y2]], "shape_type": "rectangle"})
            for name, (x, y, v) in zip(cat.keypoints, inst.keypoints):
                if v:
                    shapes.append({**base, "label": name, "points": [[x, y]], "shape_type": "point"})
            n += 1
        data = {"version": "5.4.1", "flags": {}, "shapes": shapes,
                "imagePath": os.path.relpath(project.abspath(rec), dest.parent).replace(os.sep, "/"),
                "imageData": None, "imageHeight": rec.height, "imageWidth": rec.width}
        dest.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return f"wrote {out}: {len(records)} labelme files, {n} objects"


register(Format("labelme", "labelme JSON per image: polygons (masks), rectangles (boxes), circles, masks, and "
                           "points tied to their object by group_id (keypoints, without visibility)",
                _detect, _read, _write))
