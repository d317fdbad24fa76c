"""The uncertainty measures behind "least confident first"."""

import pytest

from detector import active
from detector.domain import MODEL, Instance


def preds(*scores, person=False):
    return [Instance(1, (0, 0, 5, 5), score=s, source=MODEL, changed_by="ana" if person else MODEL)
            for s in scores]


def test_each_measure_on_hand_made_scores():
    coin, sure = preds(0.5, 0.5), preds(0.99, 0.98, 0.97)
    assert active.uncertainty(coin) == pytest.approx(2.0)  # two coin flips: one bit each
    assert active.uncertainty(coin, "mean-entropy") == pytest.approx(1.0)
    assert active.uncertainty(coin, "near-slider") == 2.0
    assert active.uncertainty(sure) < 0.6 and active.uncertainty(sure, "near-slider") == 0.0
    # The mean does not grow with the count; the sum does.
    many = preds(*([0.9] * 30))
    assert active.uncertainty(many) > active.uncertainty(coin)
    assert active.uncertainty(many, "mean-entropy") < active.uncertainty(coin, "mean-entropy")
    # Nothing predicted, or only what a person made or accepted: nothing to be unsure about.
    assert active.uncertainty([]) == 0.0 == active.uncertainty(preds(0.5, person=True), "mean-entropy")
    with pytest.raises(ValueError, match="unknown uncertainty measure"):
        active.uncertainty(coin, "vibes")
