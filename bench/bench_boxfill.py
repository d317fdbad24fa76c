"""The Box tool's fill without a model: how close the mask a drawn box gets is to the truth.

Every ground-truth object is drawn as its box, exactly or as a person draws it (``--box-noise S``:
each edge moved by a normal draw of S times the box's side; 0.04 gives boxes at IoU ~0.88 with the
truth, the agreement extreme clicking reaches, Papadopoulos et al. 2017), and filled by the
classical cuts of ``detector.boxfill`` (what the Box tool does before any model exists, and what
competes with the model's mask after). Two candidate sets in one run, the baseline first:

- ``grabcut+otsu``: GrabCut and Otsu's threshold inside the box (the fill until 2026-11-28);
- ``all``: the committed set (``boxfill.CUTS``).

Per set and image type: mean mask IoU, the shares under 0.5 (the annotator traces a polygon) and
at 0.75 or more (accepted as is), and the simulated seconds an object (``detector.annotator``: a
box, + a touch-up under 0.75, + a polygon under 0.5); and the milliseconds a box.

``--click`` adds the Click tool (``detector.clickfill``): every object clicked at its deepest
point, its region's IoU, and the seconds an object when a person clicks first and, where the
region is wrong, undoes and draws the box (filled by ``all``), as ``detector.annotator`` prices it;
``seconds_per_object_with_split``: the same, but a region that ran over other objects is split by
a click inside each of them (``review_cost`` on each whole image, no model).

    python bench/bench_boxfill.py [--data nuclei|demo] [--box-noise 0.04] [--seed 0] [--click]

Prints one JSON line per candidate set.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detector import annotator as A  # noqa: E402
from detector import boxfill as BF  # noqa: E402
from detector import masks as M  # noqa: E402
from detector.clickfill import click_point  # noqa: E402
from detector.domain import Instance  # noqa: E402
from detector.inference import fill_clicks, truth_click  # noqa: E402
from detector.coco import plan_import, read_json  # noqa: E402
from detector.images import load_image  # noqa: E402
from detector.synthetic import generate  # noqa: E402

NUCLEI = ROOT.parent / "shared" / "data" / "nuclei"
SETS = {"grabcut+otsu": ((BF.grabcut, BF.GRABCUT_MARGIN), (BF.threshold_cut, 0.0)), "all": BF.CUTS}


def objects(data: str, tmp: Path):
    """[(image type, image path, [(box, mask)])] of every image with masks."""
    if data == "nuclei":
        gt, folder = NUCLEI / "annotations.json", NUCLEI
    else:
        folder = tmp / "demo"
        gt = generate(folder, n_images=60, seed=7, size=(320, 240))  # bench_annotator's demo scenes
    raw = json.loads(Path(gt).read_text())
    kinds = {im["file_name"]: im.get("image_type", "demo") for im in raw["images"]}
    _, planned, _, _ = plan_import(read_json(gt), gt, folder)
    out = []
    for im in planned.values():
        pairs = [(i.box, M.decode(i.mask).astype(bool)) for _, i in im.instances if i.mask is not None]
        if pairs:
            kind = next((k for name, k in kinds.items() if Path(name).name == Path(im.path).name), "?")
            out.append((kind, folder / im.path, pairs))
    return out


def drawn(box, sigma: float, rng, width: int, height: int):
    if not sigma:
        return tuple(float(v) for v in box)
    x0, y0, x1, y1 = box
    e = rng.normal(0.0, sigma, 4) * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
    a, b = max(0.0, x0 + e[0]), max(0.0, y0 + e[1])
    return (a, b, max(min(float(width), x1 + e[2]), a + 1), max(min(float(height), y1 + e[3]), b + 1))


def priced(ious) -> float:
    v = np.asarray(ious)
    c = A.COSTS
    return float(np.mean(c.box + np.where(v < A.MATCH_IOU, c.polygon, np.where(v < A.GOOD_IOU, c.touch_up, 0.0))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("nuclei", "demo"), default="nuclei")
    ap.add_argument("--box-noise", type=float, default=0.0, help="edge error as a share of the side (0: exact)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--click", action="store_true", help="also the Click tool, clicked first")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images = objects(args.data, Path(tmp))
        rng = np.random.default_rng(args.seed)
        boxes = []  # drawn once, the same for every set
        for kind, path, pairs in images:
            rgb = load_image(path)
            boxes.append([drawn(b, args.box_noise, rng, rgb.shape[1], rgb.shape[0]) for b, _ in pairs])
        for name, cuts in SETS.items():
            by_kind: dict[str, list[float]] = {}
            picks: dict[str, int] = {}
            spent, n = 0.0, 0
            for (kind, path, pairs), drawn_boxes in zip(images, boxes):
                rgb = load_image(path)
                for (_, truth), box in zip(pairs, drawn_boxes):
                    t = time.perf_counter()
                    cut = BF.best_cut(rgb, box, None, cuts)
                    spent += time.perf_counter() - t
                    n += 1
                    mask = M.decode(cut.rle(*truth.shape)).astype(bool)
                    by_kind.setdefault(kind, []).append(float((mask & truth).sum() / max((mask | truth).sum(), 1)))
                    picks[cut.source] = picks.get(cut.source, 0) + 1
            every = [v for vs in by_kind.values() for v in vs]
            row = {"data": args.data, "set": name, "box_noise": args.box_noise, "objects": n,
                   "mean_iou": round(float(np.mean(every)), 3),
                   "under_0_5": round(float(np.mean(np.asarray(every) < A.MATCH_IOU)), 3),
                   "good_0_75": round(float(np.mean(np.asarray(every) >= A.GOOD_IOU)), 3),
                   "seconds_per_object": round(priced(every), 1),
                   "by_type": {k: {"objects": len(v), "mean_iou": round(float(np.mean(v)), 3),
                                   "seconds_per_object": round(priced(v), 1)} for k, v in sorted(by_kind.items())},
                   "picks": picks, "ms_per_box": round(1000 * spent / max(n, 1), 2)}
            print(json.dumps(row), flush=True)
        if args.click:
            print(json.dumps(click_row(args, images, boxes)), flush=True)


def click_row(args, images, boxes) -> dict:
    """The Click tool first, a box (the ``all`` fill) where its region is wrong."""
    by_kind: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    splits: dict[str, list[tuple[float, int, int]]] = {}
    spent = 0.0
    for (kind, path, pairs), drawn_boxes in zip(images, boxes):
        rgb = load_image(path)
        h, w = rgb.shape[:2]
        cuts: dict = {}  # each box's fill worked out once, for both ways of pricing

        def cut(b):
            if b not in cuts:
                cuts[b] = BF.best_cut(rgb, b).rle(h, w)
            return cuts[b]
        for (box, truth), box_drawn in zip(pairs, drawn_boxes):
            rle = M.encode(truth)
            gt = Instance(1, tuple(float(v) for v in box), rle)
            fill = lambda _box, cid, b=box_drawn: Instance(cid, b, cut(b))  # noqa: E731
            t = time.perf_counter()
            made = fill_clicks(None, rgb, [click_point(truth)], [1])[0]
            spent += time.perf_counter() - t
            by_kind.setdefault(kind, []).append(M.iou(made, gt) if made is not None else 0.0)
            seconds.setdefault(kind, []).append(A.draw_seconds([([gt], fill, lambda xy, cid, m=made: m)])[0])
        # the same objects with a merged region split by clicks inside it (the annotator's whole
        # image: which neighbours a region ran over depends on the others)
        truths = [Instance(1, tuple(float(v) for v in box), M.encode(truth)) for box, truth in pairs]
        by_box = {g.box: b for g, b in zip(truths, drawn_boxes)}
        fill = lambda box, cid: Instance(cid, by_box[box], cut(by_box[box]))  # noqa: E731
        cost = A.review_cost([], truths, fill, click=truth_click(None, rgb))
        splits.setdefault(kind, []).append((cost.seconds - A.COSTS.look_image, len(truths),
                                            cost.actions.get("click object", 0) - len(truths)))
    every = np.asarray([v for vs in by_kind.values() for v in vs])
    spend = [v for vs in seconds.values() for v in vs]
    split_s = sum(s for vs in splits.values() for s, _, _ in vs)
    return {"data": args.data, "set": "click first", "box_noise": args.box_noise, "objects": len(every),
            "click_mean_iou": round(float(every.mean()), 3),
            "click_under_0_5": round(float(np.mean(every < A.MATCH_IOU)), 3),
            "click_good_0_75": round(float(np.mean(every >= A.GOOD_IOU)), 3),
            "seconds_per_object": round(float(np.mean(spend)), 1),
            "seconds_per_object_with_split": round(split_s / max(len(every), 1), 2),
            "by_type": {k: {"objects": len(v), "click_mean_iou": round(float(np.mean(v)), 3),
                            "seconds_per_object": round(float(np.mean(seconds[k])), 1),
                            "seconds_per_object_with_split": round(sum(s for s, _, _ in splits[k]) / len(v), 2)}
                        for k, v in sorted(by_kind.items())},
            "ms_per_click": round(1000 * spent / max(len(every), 1), 2)}


if __name__ == "__main__":
    main()
