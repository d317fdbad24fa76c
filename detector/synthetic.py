"""Deterministic synthetic scenes: occluding shapes plus a keypoint class, with COCO ground truth.

Feeds the tests, the demo folder and the benchmarks. The same seed gives the same pixels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .domain import Category, ImageRecord, ImageStatus, Instance
from . import masks as M

KITE_KEYPOINTS = ("top", "left", "right", "bottom")
KITE_SKELETON = ((1, 2), (2, 4), (4, 3), (3, 1))

CATEGORIES: tuple[Category, ...] = (
    Category("circle", "#e6194b"),
    Category("square", "#3cb44b"),
    Category("triangle", "#4363d8"),
    Category("kite", "#f58231", keypoints=KITE_KEYPOINTS, skeleton=KITE_SKELETON),
)


@dataclass(frozen=True)
class SceneObject:
    category: str
    mask: np.ndarray  # H x W bool, visible part only
    keypoints: tuple[tuple[float, float, int], ...] = ()


def _polygon(cat: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if cat == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        s = r / math.sqrt(2)
    elif cat == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        s = r
    else:  # kite: top, right, bottom, left (drawn order); tall and narrow so left/right is clear
        pts = [(0, -1.2), (0.7, 0), (0, 1.0), (-0.7, 0)]
        s = r
        angle = 0.0
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + s * (x * ca - y * sa), cy + s * (x * sa + y * ca)) for x, y in pts]


def make_scene(rng: np.random.Generator, width: int, height: int, max_objects: int = 4
               ) -> tuple[np.ndarray, list[SceneObject]]:
    """One RGB image and its objects (later objects occlude earlier ones)."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(40, 110, size=3)
    grad = rng.uniform(-0.25, 0.25, size=3)
    img = base[None, None, :] + grad[None, None, :] * (xx[..., None] + yy[..., None]) * (128 / max(width, height))
    img = img + rng.normal(0, 6, size=img.shape)
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    n = int(rng.integers(1, max_objects + 1))
    drawn: list[tuple[str, np.ndarray, list[tuple[float, float]]]] = []
    min_r, max_r = 0.09 * min(width, height), 0.22 * min(width, height)
    for _ in range(n):
        cat = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))].name
        r = float(rng.uniform(min_r, max_r))
        cx = float(rng.uniform(r, width - r))
        cy = float(rng.uniform(r * 1.2, height - r * 1.2))
        angle = float(rng.uniform(0, 2 * math.pi))
        colour = tuple(int(c) for c in rng.integers(130, 256, size=3))
        layer = Image.new("L", (width, height), 0)
        ld = ImageDraw.Draw(layer)
        if cat == "circle":
            box = [cx - r, cy - r, cx + r, cy + r]
            draw.ellipse(box, fill=colour)
            ld.ellipse(box, fill=1)
            corners: list[tuple[float, float]] = []
        else:
            poly = _polygon(cat, cx, cy, r, angle)
            draw.polygon(poly, fill=colour)
            ld.polygon(poly, fill=1)
            corners = poly
        drawn.append((cat, np.asarray(layer, dtype=bool), corners))
    objects: list[SceneObject] = []
    covered = np.zeros((height, width), dtype=bool)
    for cat, full, corners in reversed(drawn):
        visible = full & ~covered
        covered |= full
        if visible.sum() < max(12, 0.25 * full.sum()):
            continue  # mostly hidden: no annotator would label it
        kps: tuple[tuple[float, float, int], ...] = ()
        if cat == "kite":
            top, right, bottom, left = corners
            pts = []
            for x, y in (top, left, right, bottom):
                xi, yi = int(round(x)), int(round(y))
                if not (0 <= xi < width and 0 <= yi < height):
                    pts.append((0.0, 0.0, 0))
                else:
                    occluded = covered[yi, xi] and not visible[max(0, min(height - 1, yi)), xi]
                    pts.append((round(x, 2), round(y, 2), 1 if occluded else 2))
            kps = tuple(pts)
        objects.append(SceneObject(cat, visible, kps))
    objects.reverse()
    return np.asarray(canvas), objects


def generate(folder: str | Path, n_images: int = 24, seed: int = 0, size: tuple[int, int] = (192, 144),
             max_objects: int = 4, subfolders: bool = False) -> Path:
    """Write ``n_images`` PNG scenes to ``folder`` and ``folder/ground_truth.json``; returns its path."""
    from .coco import build_coco  # local: coco imports nothing from here, keep it that way

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    cats = [c.__class__(c.name, c.color, c.keypoints, c.skeleton, i + 1) for i, c in enumerate(CATEGORIES)]
    by_name = {c.name: c for c in cats}
    records: list[ImageRecord] = []
    instances: dict[int, list[Instance]] = {}
    for i in range(n_images):
        img, objects = make_scene(rng, width, height, max_objects)
        rel = f"scene_{i:04d}.png" if not subfolders else f"part{i % 2}/scene_{i:04d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / rel)
        rec = ImageRecord(rel, width, height, ImageStatus.REVIEWED, id=i + 1)
        records.append(rec)
        inst = []
        for o in objects:
            rle = M.encode(o.mask)
            cat = by_name[o.category]
            inst.append(Instance(cat.id, M.bbox_xyxy(rle), rle, o.keypoints, image_id=rec.id))
        instances[rec.id] = inst
    data = build_coco(records, cats, instances)
    data["info"] = {"description": f"Loupe synthetic shapes, seed {seed}", "version": "1"}
    out = folder / "ground_truth.json"
    out.write_text(json.dumps(data))
    return out


def make_demo(base: str | Path, n_images: int = 40, reviewed: int = 10) -> Path:
    """The app's demo: ``base/images`` of synthetic scenes (320 x 240), the first ``reviewed``
    already reviewed from the ground truth so that Train works on the first click, and
    ``base/ground_truth.json`` for every image. Made once; returns the images folder."""
    from .coco import import_coco
    from .store import Project

    base = Path(base)
    if not (base / "ground_truth.json").exists():
        gt = generate(base / "images", n_images=n_images, seed=7, size=(320, 240))
        data = json.loads(gt.read_text())
        gt.unlink()
        keep = {im["id"] for im in data["images"][:reviewed]}
        starter = {**data, "images": [im for im in data["images"] if im["id"] in keep],
                   "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
        (base / "starter.json").write_text(json.dumps(starter))
        with Project(base / "images") as project:
            project.scan()
            import_coco(project, base / "starter.json")
        (base / "ground_truth.json").write_text(json.dumps(data))  # last: marks the demo complete
    return base / "images"
