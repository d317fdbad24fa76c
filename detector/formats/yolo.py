"""YOLO, the Ultralytics layout: ``data.yaml`` (class names; ``kpt_shape`` for pose), ``images/``
and ``labels/*.txt`` with one object per line in coordinates normalised to the image size.

- detect: ``class cx cy w h``
- segment: ``class x1 y1 x2 y2 ...`` (one polygon; a mask of several parts or with holes is joined
  into one ring with zero-width cuts, which fills back to the same pixels)
- pose: ``class cx cy w h px1 py1 v1 ...`` (``kpt_shape: [K, 3]``; ``[K, 2]`` has no visibility)

Import reads a dataset folder (or its ``data.yaml``); each label file is matched to a project image
by file name stem. Export writes ``OUT/data.yaml``, ``OUT/images/...`` (copies) and
``OUT/labels/....txt``; the task is ``pose`` when a category has keypoints, else ``segment`` when
masks exist, else ``detect`` (or as asked).
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import numpy as np

from .. import masks as M
from ..domain import Category
from . import Format, FormatError, Plan, register
from .common import ImageIndex, category_like, exported_records, is_num, person_instance

TASKS = ("detect", "segment", "pose")


def _yaml(path: Path) -> dict:
    import yaml  # PyYAML: the standard YAML reader (README, dependencies)

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FormatError(f"{path}: not a readable YAML file ({str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a mapping with 'names'")
    return data


def _names(data: dict, source: Path) -> list[str]:
    names = data.get("names")
    if isinstance(names, dict):
        if not all(isinstance(k, int) for k in names) or sorted(names) != list(range(len(names))):
            raise FormatError(f"{source}: 'names' keys must be 0..{len(names) - 1}")
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise FormatError(f"{source}: 'names' must list the class names")
    return names


def _detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in (".yaml", ".yml")
    return path.is_dir() and (path / "data.yaml").is_file() and (path / "labels").is_dir()


def _read(path: Path, project) -> Plan:
    yaml_path = path if path.is_file() else path / "data.yaml"
    if not yaml_path.is_file():
        raise FormatError(f"{path}: no data.yaml")
    base = yaml_path.parent
    data = _yaml(yaml_path)
    names = _names(data, yaml_path)
    shape = data.get("kpt_shape")
    k, dims = 0, 0
    if shape is not None:
        if not (isinstance(shape, list) and len(shape) == 2 and shape[1] in (2, 3) and isinstance(shape[0], int)
                and shape[0] > 0):
            raise FormatError(f"{yaml_path}: kpt_shape must be [K, 2] or [K, 3], found {shape!r}")
        k, dims = shape
    kp_names = data.get("kpt_names") or {}
    labels = sorted((base / "labels").rglob("*.txt")) if (base / "labels").is_dir() else []
    if not labels:
        raise FormatError(f"{base}: no labels/*.txt files")
    existing = {c.name: c for c in project.categories()}
    cats: dict[str, Category] = {}
    for i, n in enumerate(names):
        given = kp_names.get(i) if isinstance(kp_names, dict) else None
        own = existing.get(n).keypoints if n in existing else ()
        kps = tuple(given) if given else (own if len(own) == k else tuple(f"kp{j + 1}" for j in range(k)))
        if k and len(kps) != k:
            raise FormatError(f"{yaml_path}: kpt_names of {n!r} has {len(kps)} names, kpt_shape says {k}")
        cats[n] = category_like(existing, n, kps if k else ())
        if k and cats[n].keypoints and len(cats[n].keypoints) != k:
            raise FormatError(f"{yaml_path}: category {n!r} has {len(cats[n].keypoints)} keypoints in the project, "
                              f"the file has {k}")
    index = ImageIndex(project.root, str(base))
    plan = Plan(categories=cats)
    for lf in labels:
        rel = index.find(lf.stem, str(lf.relative_to(base)), stem=True)
        img = plan.images.get(rel) or index.planned(rel, lf.name)
        plan.images[rel] = img
        w, h = img.width, img.height
        for ln, line in enumerate(lf.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            where = f"{lf.relative_to(base)}:{ln}"
            if not line.strip():
                continue
            try:
                vals = [float(v) for v in line.split()]
            except ValueError:
                raise FormatError(f"{base / where}: not numbers: {line[:60]!r}") from None
            if not all(is_num(v) for v in vals) or not float(vals[0]).is_integer():
                raise FormatError(f"{base / where}: the class must be an integer and every value finite")
            c = int(vals[0])
            if not 0 <= c < len(names):
                raise FormatError(f"{base / where}: class {c} is not in data.yaml's {len(names)} names")
            rest = vals[1:]
            mask, kps = None, ()
            if k:
                if len(rest) != 4 + k * dims:
                    raise FormatError(f"{base / where}: a pose line needs 4 + {k}x{dims} values, found {len(rest)}")
                cx, cy, bw, bh = rest[:4]
                points = []
                for row in np.array(rest[4:]).reshape(k, dims):
                    v = int(row[2]) if dims == 3 else (2 if (row[0] or row[1]) else 0)
                    if dims == 3 and (v not in (0, 1, 2) or row[2] != v):
                        raise FormatError(f"{base / where}: keypoint visibility must be 0, 1 or 2")
                    points.append((float(row[0] * w), float(row[1] * h), v) if v else (0.0, 0.0, 0))
                kps = tuple(points)
                box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
            elif len(rest) == 4:
                cx, cy, bw, bh = rest
                box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
            elif len(rest) >= 6 and len(rest) % 2 == 0:
                poly = [v * (w if i % 2 == 0 else h) for i, v in enumerate(rest)]
                mask = M.from_polygons([poly], h, w)
                box = M.bbox_xyxy(mask)
            else:
                raise FormatError(f"{base / where}: expected 4 box values or a polygon of 3+ points, "
                                  f"found {len(rest)} values")
            coords = rest if not k else rest[:4] + [v for j, v in enumerate(rest[4:]) if j % dims < 2]
            if any(v < -0.01 or v > 1.01 for v in coords):
                raise FormatError(f"{base / where}: coordinates must be normalised to 0..1")
            img.instances.append((names[c], person_instance(box, mask, kps)))
    return plan


def _polygon(mask_rle) -> list[float]:
    """One ring for YOLO: the parts and holes of a mask joined by zero-width cuts."""
    polys = M.rle_to_polygons(mask_rle)
    if not polys:
        return []
    ring = np.array(polys[0]).reshape(-1, 2)
    for p in polys[1:]:
        ring = M._bridge(ring, np.array(p).reshape(-1, 2))
    return ring.reshape(-1).tolist()


def _write(project, out: Path, *, reviewed_only: bool = False, task: str | None = None,
           copy_images: bool = True) -> str:
    cats = project.categories()
    kp_cats = [c for c in cats if c.keypoints]
    if task is None:
        task = "pose" if kp_cats else "segment"
    if task not in TASKS:
        raise FormatError(f"{out}: unknown YOLO task {task!r} (known: {', '.join(TASKS)})")
    k = max((len(c.keypoints) for c in kp_cats), default=0) if task == "pose" else 0
    if task == "pose" and not k:
        raise FormatError(f"{out}: YOLO pose needs a category with keypoints")
    index = {c.id: i for i, c in enumerate(cats)}
    records = exported_records(project, reviewed_only)
    out.mkdir(parents=True, exist_ok=True)
    n_obj = 0
    for rec, insts in records:
        w, h = rec.width, rec.height
        rel = PurePosixPath(rec.path)
        label = out / "labels" / rel.with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for inst in insts:
            if inst.crowd or inst.category_id not in index:
                continue
            x1, y1, x2, y2 = inst.box
            cls = index[inst.category_id]
            box = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
            if task == "segment":
                ring = _polygon(inst.mask) if inst.mask is not None else [x1, y1, x2, y1, x2, y2, x1, y2]
                if len(ring) < 6:
                    continue
                vals = [v / (w if i % 2 == 0 else h) for i, v in enumerate(ring)]
            elif task == "pose":
                pts = list(inst.keypoints) + [(0.0, 0.0, 0)] * (k - len(inst.keypoints))
                vals = box + [v for x, y, vis in pts for v in (x / w if vis else 0, y / h if vis else 0, vis)]
            else:
                vals = box
            lines.append(" ".join([str(cls)] + [f"{v:.6f}".rstrip("0").rstrip(".") if not isinstance(v, int)
                                                 else str(v) for v in vals]))
            n_obj += 1
        label.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
        if copy_images:
            dest = out / "images" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(project.abspath(rec), dest)
    import yaml

    meta: dict = {"path": ".", "train": "images", "val": "images", "names": {i: c.name for i, c in enumerate(cats)}}
    if task == "pose":
        meta["kpt_shape"] = [k, 3]
        meta["kpt_names"] = {i: list(c.keypoints) for i, c in enumerate(cats) if c.keypoints}
        if len(kp_cats) == 1 and len(kp_cats[0].keypoints) == k:
            meta["flip_idx"] = kp_cats[0].flip_permutation()
    (out / "data.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return f"wrote {out} (YOLO {task}): {len(records)} images, {n_obj} objects, {len(cats)} classes"


register(Format("yolo", "YOLO (Ultralytics): boxes (detect), one polygon per object (segment) or boxes with "
                        "keypoints and visibility (pose); normalised coordinates, classes in data.yaml",
                _detect, _read, _write))
