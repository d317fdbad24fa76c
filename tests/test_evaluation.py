"""COCO evaluation: dense images are scored with enough detections per image."""

import numpy as np

from detector import masks as M
from detector.domain import Category, ImageRecord, Instance
from detector.evaluation import CocoEvaluator


def _grid(n: int, size: int = 400) -> list[Instance]:
    """n small squares on a grid, each a ground-truth instance."""
    out = []
    side = int(np.ceil(np.sqrt(n)))
    step = size // side
    for k in range(n):
        y, x = divmod(k, side)
        m = np.zeros((size, size), np.uint8)
        m[y * step + 2:y * step + step - 2, x * step + 2:x * step + step - 2] = 1
        out.append(Instance(category_id=1, box=M.bbox_xyxy(M.encode(m)), mask=M.encode(m), score=1.0))
    return out


def test_dense_image_perfect_predictions_score_one():
    cats = [Category("nucleus", id=1)]
    gt = _grid(150)
    preds = [g.with_(score=0.5 + 0.001 * k) for k, g in enumerate(gt)]
    ev = CocoEvaluator(cats)
    ev.process(ImageRecord("a.png", 400, 400, id=1), gt, preds)
    out = ev.evaluate()
    assert out["segm"]["AP"] == 1.0 and out["bbox"]["AP50"] == 1.0
    capped = CocoEvaluator(cats, max_dets=100)  # COCO's default cap loses a third of them
    capped.process(ImageRecord("a.png", 400, 400, id=1), gt, preds)
    assert capped.evaluate()["segm"]["AP"] < 0.8
