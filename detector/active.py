"""Active learning: how unsure the model is about an image, to review the most useful ones first.

Measured against random order with the simulated annotator (``bench/bench_annotator.py``;
figures in ``bench/RESULTS.md``). The measures work on the scores of an image's predictions, so
they cost nothing at prediction time and can be recomputed from a stored project:

- ``entropy``: the sum of the detections' binary score entropies. Each detection with a score
  near 0.5 is a coin the person may have to flip (delete, or accept); a sum, because an image
  with many such detections costs more to correct and teaches the model more.
- ``near-slider``: the number of detections within 0.2 of the confidence slider: the ones the
  person sees appear or vanish when moving it.
- ``mean-entropy``: the mean of the detections' score entropies: how unsure the model is per
  detection, so that crowded images do not win by their count alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .domain import Instance

MEASURES = ("entropy", "near-slider", "mean-entropy")
DEFAULT_MEASURE = "entropy"
SLIDER = 0.5  # the app's default confidence slider
FLOOR = 0.05  # torchvision's box_score_thresh: scores below are never stored


def _scores(instances: Iterable[Instance]) -> list[float]:
    return [float(i.score) for i in instances if i.score is not None and not i.touched_by_person]


def _h(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def uncertainty(instances: Sequence[Instance], measure: str = DEFAULT_MEASURE) -> float:
    """How unsure the model is about one image (higher: review it sooner)."""
    scores = _scores(instances)
    if measure == "entropy":
        return round(sum(_h(s) for s in scores if s >= FLOOR), 4)
    if measure == "mean-entropy":
        hs = [_h(s) for s in scores if s >= FLOOR]
        return round(sum(hs) / len(hs), 4) if hs else 0.0
    if measure == "near-slider":
        return float(sum(1 for s in scores if abs(s - SLIDER) < 0.2))
    raise ValueError(f"unknown uncertainty measure {measure!r}; choose from {', '.join(MEASURES)}")


def rank(project, measure: str = DEFAULT_MEASURE) -> list[tuple[str, float]]:
    """(path, uncertainty) of the predicted images not yet reviewed, most unsure first; the
    default measure is read from the store, another is computed from the stored predictions."""
    from .domain import ImageStatus

    records = project.images([ImageStatus.PREDICTED, ImageStatus.IN_REVIEW])
    if measure == DEFAULT_MEASURE:
        rows = [(r.path, r.uncertainty) for r in records if r.uncertainty is not None]
    else:
        rows = [(r.path, uncertainty(project.instances(r.id), measure)) for r in records]
    return sorted(rows, key=lambda pv: (-pv[1], pv[0]))
