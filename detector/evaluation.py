"""COCO AP with pycocotools' COCOeval, in detectron2's reset / process / evaluate shape."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from . import masks as M
from .coco import build_coco, plan_import, read_json
from .domain import Category, ImageRecord, Instance
from .images import load_image
from .annotator import best_slider, draw_seconds, slider_costs
from .inference import Predictor, load_detector, truth_click, truth_fills
from .model import Detector

# COCO's 17 person keypoint sigmas, used when a schema matches them; 0.05 otherwise.
_COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07,
                         .87, .87, .89, .89]) / 10.0


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def _stats(ev: COCOeval) -> dict[str, float]:
    """AP, AP50, AP75 over all areas at the largest maxDets, read from ``eval['precision']``
    (``stats[0]`` is computed at maxDets 100 whatever the params say; dense images need more)."""
    prec = ev.eval["precision"][:, :, :, 0, -1]  # T x R x K at area 'all', the last maxDets
    thr = ev.params.iouThrs

    def mean(s):
        s = s[s > -1]
        return round(float(s.mean()), 4) if s.size else -1.0

    return {"AP": mean(prec), "AP50": mean(prec[np.isclose(thr, 0.5)]),
            "AP75": mean(prec[np.isclose(thr, 0.75)])}


class CocoEvaluator:
    """``reset()``, ``process(image, ground truth, predictions)`` per image, then ``evaluate()``."""

    def __init__(self, categories: list[Category] | tuple[Category, ...], max_dets: int | None = None):
        self.categories = list(categories)
        self.max_dets = max_dets  # None: 100, or the most ground-truth instances in one image
        self.reset()

    def reset(self) -> None:
        self.records: list[ImageRecord] = []
        self.gt: dict[int, list[Instance]] = {}
        self.dt: dict[int, list[Instance]] = {}

    def process(self, record: ImageRecord, gt: list[Instance], predictions: list[Instance]) -> None:
        key = len(self.records) + 1
        self.records.append(ImageRecord(record.path, record.width, record.height, id=key))
        self.gt[key] = list(gt)
        self.dt[key] = list(predictions)

    def evaluate(self) -> dict[str, dict[str, float]]:
        data = build_coco(self.records, self.categories, self.gt)
        cat_ids = {c.id: i + 1 for i, c in enumerate(self.categories)}
        with _quiet():
            gt = COCO()
            gt.dataset = copy.deepcopy(data)  # COCOeval rewrites segmentations in place
            gt.createIndex()
        out: dict[str, dict[str, float]] = {}
        kp_cats = [c for c in self.categories if c.keypoints]
        for iou in ("bbox", "segm", "keypoints"):
            if iou == "keypoints" and not kp_cats:
                continue
            results = []
            for img_id, preds in self.dt.items():
                for p in preds:
                    r = {"image_id": img_id, "category_id": cat_ids[p.category_id],
                         "score": float(p.score if p.score is not None else 1.0)}
                    x1, y1, x2, y2 = p.box
                    r["bbox"] = [x1, y1, x2 - x1, y2 - y1]
                    if iou == "segm":
                        if p.mask is None:
                            continue
                        rle = M.compress(p.mask)
                        r["segmentation"] = {"size": rle["size"], "counts": rle["counts"]}
                    if iou == "keypoints":
                        if not p.keypoints:
                            continue
                        r["keypoints"] = [v for x, y, s in p.keypoints for v in (x, y, s)]
                    results.append(r)
            if not results:  # loadRes needs a non-empty list; no detections scores 0
                out[iou] = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
                continue
            if iou == "keypoints":
                # One COCOeval per keypoint schema: OKS needs sigmas of that schema's length.
                per = []
                for c in kp_cats:
                    cid = cat_ids[c.id]
                    rs = [r for r in results if r["category_id"] == cid]
                    has_gt = any(a["category_id"] == cid and a.get("num_keypoints", 0) > 0
                                 for a in data["annotations"])
                    if not rs or not has_gt:
                        continue
                    per.append(self._run(gt, rs, iou, [cid], len(c.keypoints)))
                out[iou] = {k: round(float(np.mean([p[k] for p in per])), 4) for k in ("AP", "AP50", "AP75")} \
                    if per else {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
            else:
                most = max((len(v) for v in self.gt.values()), default=0)
                out[iou] = self._run(gt, results, iou, None, 0, self.max_dets or max(100, most))
        return out

    @staticmethod
    def _run(gt: COCO, results: list[dict], iou: str, cat_ids: list[int] | None, k: int,
             max_dets: int = 100) -> dict:
        with _quiet():
            dt = gt.loadRes(copy.deepcopy(results))
            ev = COCOeval(gt, dt, iou)
            if iou != "keypoints" and max_dets > 100:
                ev.params.maxDets = [1, 10, int(max_dets)]
            if cat_ids is not None:
                ev.params.catIds = cat_ids
            if iou == "keypoints":
                ev.params.kpt_oks_sigmas = _COCO_SIGMAS if k == 17 else np.full(k, 0.05)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        s = ev.stats
        stats = _stats(ev) if iou != "keypoints" else {
            "AP": round(float(s[0]), 4), "AP50": round(float(s[1]), 4), "AP75": round(float(s[2]), 4)}
        # COCOeval reports -1 when there is nothing to score; report that as 0.
        return {k2: max(0.0, v) for k2, v in stats.items()}


SLIDER_IMAGES = 50
# ... and no image after the one that brings the priced ground truth to this many objects: pricing
# costs ~0.1 s an object on a 2-core CPU (nuclei, 8 images of 596 objects: 60 s, against 4 s for
# their AP), so a run's held-out images on crowded data (~75 nuclei an image) no longer keep its
# model waiting minutes; 400 objects are 5-6 such images, and 2-9 images already chose the slider
# within 2 s of the best value (bench/RESULTS.md)
SLIDER_OBJECTS = 400


def evaluate_detector(detector: Detector, items: list[tuple[ImageRecord, Path, list[Instance]]],
                      device: str | None = None, batch_size: int = 4, price_slider: bool = False) -> dict:
    """AP of ``detector`` on (record, path, ground truth) items. With ``price_slider``, also
    whether its masks help the Box tool's fill (``fill``: ``fill_choice``) and what correcting its
    predictions into the ground truth would cost a person at each confidence slider value, with
    that fill and the Click tool for the objects it misses (``slider``: ``slider_choice``). Both on
    the first ``SLIDER_IMAGES`` items, up to ``SLIDER_OBJECTS`` objects: pricing fills every
    ground-truth box, and 2-9 images already chose within 2 s of the best value, bench/RESULTS.md.
    Off by default: pricing costs ~0.1 s an object on a 2-core CPU (minutes on nuclei's 38 unseen
    images, also on a GPU), and only a run's held-out evaluation reads the prices."""
    predictor = Predictor(detector, device, batch_size)
    # One entry per project category (a COCO start may map several model classes to one).
    ev = CocoEvaluator(list({c.id: c for c in detector.categories}.values()))
    priced, objects = [], 0
    for rec, path, gt in items:
        a = load_image(path)
        rec = ImageRecord(rec.path, a.shape[1], a.shape[0], rec.status, id=rec.id)
        (preds,) = predictor.predict([a])
        ev.process(rec, gt, list(preds))
        if price_slider and len(priced) < SLIDER_IMAGES and objects < SLIDER_OBJECTS:
            priced.append((preds, gt, *truth_fills(predictor, a, gt), truth_click(predictor, a)))
            objects += len(gt)
    metrics = ev.evaluate()
    metrics["images"] = len(items)
    if priced:
        fill = metrics["fill"] = fill_choice([(gt, f) for _, gt, f, _, _ in priced],
                                             [(gt, f) for _, gt, _, f, _ in priced])
        metrics["slider"] = slider_choice([(p, gt, with_model if fill["model_masks"] else cuts, click)
                                           for p, gt, with_model, cuts, click in priced])
    return metrics


def fill_choice(with_model, cuts_only) -> dict:
    """Whether the model's mask should stay one of a drawn box's fill candidates: the simulated
    seconds an object to draw every ground-truth object as a box and correct its fill, with the
    model's mask among the candidates and with the classical cuts alone (``detector.boxfill``);
    the model's masks stay only where they make it cheaper (or where no object has a mask to
    judge them by). On a tie they gained nothing there, and a box fit cannot judge them (the
    mask head paints inside the box it is given, so its mask fits that box by construction): the
    cuts alone then. A weak first model's masks lose to the cuts (bench/RESULTS.md, "the fill
    follows the model"). (truth, fill) per image each."""
    m, n = draw_seconds(with_model)
    c, _ = draw_seconds(cuts_only)
    masked = any(g.mask is not None for truth, _ in with_model for g in truth)
    return {"model_masks": m < c or not masked, "model_seconds_per_object": round(m, 2),
            "cuts_seconds_per_object": round(c, 2), "objects": n}


SHOW_MARGIN = 0.03  # showing predictions must save this share of an image's seconds (slider_choice)


def slider_choice(priced) -> dict:
    """The confidence slider that leaves a person the least to correct on these images, priced
    by the simulated annotator (``detector.annotator``): ``best``, and the seconds an image at
    each value. (predictions, truth, fill[, click]) per image.

    With a click, also whether the Click tool should show a prediction the slider hides
    (``click_shows_hidden``): only where that, at its best slider, is cheaper than growing the
    region from the click. A weak model's hidden masks cost more than the grown region (on the
    nuclei's first model 1,040 against 873 s an image, bench/RESULTS.md, "The Click tool"); a tie
    leaves it to the region.

    The predictions are shown (``best`` below the grid's top, which hides them all) only where
    that saves at least ``SHOW_MARGIN`` of an image's seconds over hiding them: the held-out
    images are few (2 for a first model of 10 reviewed images), and a wrong choice costs unevenly.
    Shown predictions a person must check and delete cost more than none where the model is
    weak (the demo's first model: 15.3 s an unseen image at the 0.85 its two held-out images chose
    by 0.2 s, against 9.8 hidden and 14.1 with no model), while hiding a model's predictions
    where they would have saved a little leaves the Click tool and the box fill to find every
    object (the nuclei's rounds: 0.3-6.4 s of 537-593 an image, 1.2 % at most; bench/RESULTS.md,
    "The slider shows predictions only where they save 3 %"). Where the held-out images speak
    for the rest, the rule gives up less than ``SHOW_MARGIN`` of an image's seconds."""
    by = slider_costs(priced)
    shows_hidden = None
    if any(len(it) > 3 and it[3] is not None for it in priced):
        region = slider_costs(priced, show_hidden=False)
        shows_hidden = min(by.values()) < min(region.values())
        if not shows_hidden:
            by = region
    best = best_slider(by)
    if by:
        hidden = max(by)  # the slider at its top: no prediction shown
        if best != hidden and by[best] > (1 - SHOW_MARGIN) * by[hidden]:
            best = hidden
    return {"best": best, "images": len(priced), "click_shows_hidden": shows_hidden,
            "seconds_per_image": {f"{s:.2f}": round(c, 2) for s, c in by.items()}}


def evaluate_project(project, weights: str, gt: str | None = None, device: str | None = None,
                     records: list[ImageRecord] | None = None, price_slider: bool = True) -> dict:
    """AP of a checkpoint on the held-out reviewed images, or on a ground-truth COCO file."""
    from .training import split_reviewed

    det = load_detector(project, weights)
    by_name = {c.name: c for c in det.categories}
    items = []
    if gt is not None:
        _, images, _, _ = plan_import(read_json(gt), gt, project.root)
        for im in images.values():
            insts = [i.with_(category_id=by_name[n].id) for n, i in im.instances if n in by_name]
            items.append((ImageRecord(im.path, im.width, im.height), project.root / im.path, insts))
    else:
        if records is None:
            holdout = det.meta.get("holdout", {})
            wanted = set(holdout.get("images", []))
            if wanted:
                records = [r for r in project.images() if r.path in wanted]
            else:
                _, records = split_reviewed(project, 0.2)
        for r in records:
            insts = [i for i in project.instances(r.id) if i.touched_by_person]
            items.append((project.ensure_size(r), project.abspath(r), insts))
    if not items:
        return {"bbox": None, "segm": None, "images": 0,
                "message": "no held-out reviewed images to evaluate on"}
    return evaluate_detector(det, items, device, price_slider=price_slider)


def held_out_metrics(project, checkpoint: str, compare: str | None = None, device: str | None = None,
                     held: list[str] | None = None) -> tuple[dict, dict | None]:
    """(the new checkpoint's AP, ``compare``'s AP or None), both on the images the new run held
    out (``held``, else read from the checkpoint): what detector.versions.register compares."""
    if held is None:
        from .model import load_checkpoint

        held = load_checkpoint(checkpoint).get("holdout", {}).get("images", [])
    records = [r for r in (project.image_by_path(p) for p in held) if r is not None]
    after = evaluate_project(project, checkpoint, records=records, device=device)
    # The active model's AP only: its slider table would be read by nothing.
    before = (evaluate_project(project, compare, records=records, device=device, price_slider=False)
              if compare else None)
    return after, before
