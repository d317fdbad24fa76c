"""Reading COCO JSON: the whole file validated and normalised against the images folder before
anything is written (see shared/COCO.md); a problem rejects the file, naming the entry."""

from __future__ import annotations

import json
import math
import os
import posixpath
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any


from . import masks as M
from .errors import LoupeError
from .domain import Category, Instance
from .images import ImageReadError, read_size, scan_folder

IMPORTED_BY = "import"  # changed_by of an imported instance


class CocoError(LoupeError):
    """A COCO file rejected whole; the message names the file and the offending entry."""


@dataclass
class _PlannedImage:
    path: str
    width: int
    height: int
    instances: list[tuple[str, Instance]] = field(default_factory=list)  # (category name, inst)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_json(path: str | os.PathLike) -> Any:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise CocoError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CocoError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise CocoError(f"{path}: JSON nested too deeply") from exc


class _Reader:
    """Validates and normalises a COCO dict against an images root; raises CocoError."""

    def __init__(self, data: Any, source: str, root: Path):
        self.data, self.source, self.root = data, source, root.resolve()
        self.notes: list[str] = []
        self._counts: Counter[str] = Counter()
        self._files: dict[str, list[str]] | None = None

    def fail(self, where: str, problem: str) -> CocoError:
        return CocoError(f"{self.source}: {where}: {problem}")

    def note(self, key: str) -> None:
        self._counts[key] += 1

    # -- top level --------------------------------------------------------------------------
    def top(self) -> tuple[list, list, list]:
        d = self.data
        if not isinstance(d, dict):
            raise self.fail("top level", f"expected a JSON object, found {type(d).__name__}")
        for key in ("images", "annotations", "categories"):
            if key not in d:
                raise self.fail("top level", f"missing key {key!r}")
            if not isinstance(d[key], list):
                raise self.fail(key, f"expected a list, found {type(d[key]).__name__}")
        return d["images"], d["annotations"], d["categories"]

    # -- categories -------------------------------------------------------------------------
    def categories(self, cats: list, used_ids: set) -> dict[Any, Category]:
        out: dict[Any, Category] = {}
        names: set[str] = set()
        for i, c in enumerate(cats):
            where = f"categories[{i}]"
            if not isinstance(c, dict):
                raise self.fail(where, "expected an object")
            if not _is_int(c.get("id")):
                raise self.fail(where, f"'id' must be an integer, found {c.get('id')!r}")
            if not isinstance(c.get("name"), str) or not c["name"].strip():
                raise self.fail(where, "'name' must be a non-empty string")
            cid, name = c["id"], c["name"].strip()
            if cid in out:
                raise self.fail(where, f"duplicate category id {cid}")
            if name in names:
                raise self.fail(where, f"duplicate category name {name!r}")
            if (cid == 0 or name in ("_background_", "__background__", "background")) \
                    and cid not in used_ids:
                self.notes.append(f"dropped unused category {name!r} (id {cid}), "
                                  "a background/dataset entry some tools write")
                continue
            kps = c.get("keypoints") or []
            if not isinstance(kps, list) or not all(isinstance(k, str) for k in kps):
                raise self.fail(where, "'keypoints' must be a list of names")
            skel = c.get("skeleton") or []
            if not isinstance(skel, list) or not all(
                    isinstance(p, list) and len(p) == 2 and all(_is_int(v) for v in p) for p in skel):
                raise self.fail(where, "'skeleton' must be a list of [i, j] index pairs")
            k = len(kps)
            flat = [v for p in skel for v in p]
            if flat and min(flat) == 0 and max(flat) < k:
                skel = [[a + 1, b + 1] for a, b in skel]
                self.notes.append(f"category {name!r}: skeleton was 0-based, made 1-based")
            elif flat and (min(flat) < 1 or max(flat) > k):
                raise self.fail(where, f"skeleton index out of range 1..{k}: {skel}")
            out[cid] = Category(name, keypoints=tuple(kps), skeleton=tuple(tuple(p) for p in skel))
            names.add(name)
        if any(cid == 0 for cid in out):
            self.notes.append("category ids started at 0; renumbered from 1")
        return out

    # -- images -----------------------------------------------------------------------------
    def _index(self) -> dict[str, list[str]]:
        if self._files is None:
            idx: dict[str, list[str]] = defaultdict(list)
            for rel, _, _ in scan_folder(self.root):
                idx[posixpath.basename(rel).lower()].append(rel)
            self._files = idx
        return self._files

    def locate(self, file_name: str, where: str) -> str:
        """The image's path relative to the root; never outside it."""
        name = file_name.replace("\\", "/").strip()
        while name.startswith("./"):
            name = name[2:]
        pure = PurePosixPath(name)
        inside = not (pure.is_absolute() or ".." in pure.parts or (len(name) > 1 and name[1] == ":"))
        if inside:
            if (self.root / name).is_file():
                if name != file_name:
                    self.note("file names with '\\' or './' normalised")
                return name
        elif pure.is_absolute():
            try:
                rel = Path(name).resolve().relative_to(self.root)
                if (self.root / rel).is_file():
                    self.note("absolute file names made relative to the images root")
                    return rel.as_posix()
            except ValueError:
                pass
        hits = self._index().get(pure.name.lower(), [])
        if len(hits) == 1:
            self.note("file names looked up by name under the images root")
            return hits[0]
        if len(hits) > 1:
            raise self.fail(where, f"file_name {file_name!r} matches several files under "
                            f"{self.root}: {', '.join(hits[:3])}")
        if not inside:
            raise self.fail(where, f"file_name {file_name!r} points outside the images root "
                            f"{self.root} and no file of that name is inside it")
        raise self.fail(where, f"file_name {file_name!r} not found under {self.root}")

    def images(self, imgs: list) -> dict[Any, _PlannedImage]:
        out: dict[Any, _PlannedImage] = {}
        seen_paths: dict[str, Any] = {}
        for i, im in enumerate(imgs):
            where = f"images[{i}]"
            if not isinstance(im, dict):
                raise self.fail(where, "expected an object")
            if not _is_int(im.get("id")) and not isinstance(im.get("id"), str):
                raise self.fail(where, f"'id' must be an integer, found {im.get('id')!r}")
            if im["id"] in out:
                raise self.fail(where, f"duplicate image id {im['id']!r}")
            if not isinstance(im.get("file_name"), str) or not im["file_name"]:
                raise self.fail(where, "'file_name' must be a non-empty string")
            rel = self.locate(im["file_name"], where)
            if rel in seen_paths:
                raise self.fail(where, f"{rel!r} listed twice (image ids {seen_paths[rel]!r} "
                                f"and {im['id']!r})")
            seen_paths[rel] = im["id"]
            try:
                w, h = read_size(self.root / rel)
            except ImageReadError as exc:
                raise self.fail(where, f"{rel}: {exc.reason}") from exc
            dw, dh = im.get("width"), im.get("height")
            if dw is None or dh is None:
                self.note("missing image sizes read from the files")
            elif not (_is_num(dw) and _is_num(dh)):
                raise self.fail(where, f"width/height must be numbers, found {dw!r}/{dh!r}")
            elif (int(dw), int(dh)) != (w, h):
                raise self.fail(where, f"says {int(dw)}x{int(dh)} but {rel} is {w}x{h} "
                                "(as displayed, EXIF rotation applied)")
            out[im["id"]] = _PlannedImage(rel, w, h)
        return out

    # -- annotations ------------------------------------------------------------------------
    def mask(self, seg: Any, where: str, h: int, w: int) -> dict | None:
        if seg is None or seg == [] or seg == {}:
            return None
        if isinstance(seg, dict):
            size, counts = seg.get("size"), seg.get("counts")
            if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
                raise self.fail(where, "RLE 'size' must be [height, width]")
            if list(size) != [h, w]:
                raise self.fail(where, f"RLE size {size} does not match the image ({h}x{w}, "
                                "as [height, width])")
            if isinstance(counts, list):
                if not all(_is_int(v) and v >= 0 for v in counts) or sum(counts) != h * w:
                    raise self.fail(where, "uncompressed RLE counts must be non-negative "
                                    f"integers summing to {h * w}")
                self.note("uncompressed RLE masks compressed")
            elif not isinstance(counts, str):
                raise self.fail(where, "RLE 'counts' must be a string or a list of integers")
            try:
                rle = M.compress({"size": size, "counts": counts})
                if M.decode(rle).shape != (h, w):
                    raise ValueError("decoded size differs")
            except Exception as exc:
                raise self.fail(where, f"RLE cannot be decoded ({exc})") from exc
            return rle
        if isinstance(seg, list):
            if all(_is_num(v) for v in seg):  # one flat polygon instead of a list of them
                seg = [seg]
                self.note("flat polygons wrapped in a list")
            polys = []
            for j, p in enumerate(seg):
                if not isinstance(p, list) or not all(_is_num(v) for v in p):
                    raise self.fail(where, f"segmentation[{j}] must be a list of numbers")
                if len(p) % 2:
                    raise self.fail(where, f"segmentation[{j}] has an odd number of coordinates")
                if len(p) >= 6:
                    polys.append(p)
                else:
                    self.note("polygons with fewer than 3 points dropped")
            return M.from_polygons(polys, h, w) if polys else None
        raise self.fail(where, f"'segmentation' must be polygons or RLE, found {type(seg).__name__}")

    def annotations(self, anns: list, images: dict[Any, _PlannedImage],
                    cats: dict[Any, Category]) -> int:
        ids: Counter = Counter()
        all_crowd = bool(anns) and all(isinstance(a, dict) and a.get("iscrowd") in (1, True)
                                       for a in anns)
        n = 0
        for i, a in enumerate(anns):
            where = f"annotations[{i}]"
            if not isinstance(a, dict):
                raise self.fail(where, "expected an object")
            ids[a.get("id")] += 1
            img = images.get(a.get("image_id"))
            if img is None:
                raise self.fail(where, f"image_id {a.get('image_id')!r} is not in 'images'")
            cat = cats.get(a.get("category_id"))
            if cat is None:
                raise self.fail(where, f"category_id {a.get('category_id')!r} is not in "
                                "'categories'")
            crowd = a.get("iscrowd", 0)
            if crowd not in (0, 1, True, False):
                raise self.fail(where, f"'iscrowd' must be 0 or 1, found {crowd!r}")
            crowd = bool(crowd) and not all_crowd
            rle = self.mask(a.get("segmentation"), where, img.height, img.width)
            bbox = a.get("bbox")
            if bbox is not None:
                if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
                    raise self.fail(where, f"'bbox' must be [x, y, width, height], found {bbox!r}")
                if bbox[2] < 0 or bbox[3] < 0:
                    raise self.fail(where, f"'bbox' has a negative size: {bbox}")
                box = (bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3])
            elif rle is not None:
                box = M.bbox_xyxy(rle)
                self.note("missing boxes computed from masks")
            else:
                raise self.fail(where, "has neither 'bbox' nor 'segmentation'")
            if rle is not None and "area" in a and _is_num(a["area"]) \
                    and abs(float(a["area"]) - M.area(rle)) > 0.5:
                self.note("'area' values recomputed from the masks")
            kps = a.get("keypoints")
            k = len(cat.keypoints)
            keypoints: tuple = ()
            if kps not in (None, []):
                if not k:
                    raise self.fail(where, f"has keypoints but category {cat.name!r} defines none")
                if not (isinstance(kps, list) and len(kps) == 3 * k and all(_is_num(v) for v in kps)):
                    raise self.fail(where, f"'keypoints' must be {3 * k} numbers ({k} keypoints of "
                                    f"{cat.name!r} as x, y, v), found "
                                    f"{len(kps) if isinstance(kps, list) else type(kps).__name__}")
                pts = []
                for j in range(k):
                    x, y, v = kps[3 * j: 3 * j + 3]
                    if v not in (0, 1, 2):
                        raise self.fail(where, f"keypoint {j + 1} visibility must be 0, 1 or 2, "
                                        f"found {v!r}")
                    if v == 0 and (x or y):
                        self.note("coordinates of unlabelled (v=0) keypoints cleared")
                        x = y = 0
                    pts.append((float(x), float(y), int(v)))
                keypoints = tuple(pts)
            elif k:
                keypoints = tuple((0.0, 0.0, 0) for _ in range(k))
            img.instances.append((cat.name, Instance(
                category_id=-1, box=tuple(float(v) for v in box), mask=rle, keypoints=keypoints,
                crowd=crowd, source="person", changed_by=IMPORTED_BY)))
            n += 1
        if all_crowd:
            self.notes.append(f"all {len(anns)} annotations were marked iscrowd=1 (as CVAT writes "
                              "masks); imported as normal instances")
        dupes = sum(c - 1 for c in ids.values() if c > 1)
        if dupes:
            self.notes.append(f"{dupes} duplicate annotation ids; annotations renumbered")
        return n

    def finish_notes(self) -> list[str]:
        return self.notes + [f"{k} ({v})" for k, v in self._counts.items()]


def plan_import(data: Any, source: str, root: Path) -> tuple[dict[Any, Category],
                                                            dict[Any, _PlannedImage], list[str], int]:
    """Validate a whole COCO dict without touching any project; raise CocoError on any problem."""
    r = _Reader(data, source, root)
    imgs, anns, cats = r.top()
    used = {a.get("category_id") for a in anns if isinstance(a, dict)}
    categories = r.categories(cats, used)
    images = r.images(imgs)
    n = r.annotations(anns, images, categories)
    return categories, images, r.finish_notes(), n
