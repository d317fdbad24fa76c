"""The random draws inside torchvision's training forward, from a generator of the step's own.

torchvision draws from the process's global generator in two places while a detection model
trains: which anchors and regions are sampled for the losses (``BalancedPositiveNegativeSampler``)
and, with scale jitter, the size an image is resized to (``GeneralizedRCNNTransform``). When a
CPU step splits its batch over threads (detector/training.py, ``step_threads``), the threads
would take turns on that generator in whatever order they happen to run, and a seed would no
longer give the same run twice. So the trainer draws one seed per part of a batch (in order, on
its own thread) and each part draws from a generator of that seed: same seed, same run, however
the threads interleave. Swapped in by class, like detector/heads.py: same objects, same state;
without a step's generator (inference, a model used elsewhere) they are torchvision's.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from .heads import StretchingTransform

_local = threading.local()


def _generator() -> torch.Generator | None:
    return getattr(_local, "generator", None)


@contextmanager
def drawing_from(seed: int | None):
    """This thread's training forward draws from a generator seeded with ``seed`` meanwhile
    (None: from the process's generators, as torchvision does; a GPU run's way)."""
    _local.generator = None if seed is None else torch.Generator().manual_seed(seed)
    try:
        yield
    finally:
        _local.generator = None


class StepSampler(BalancedPositiveNegativeSampler):
    """torchvision's sampler (the same counts of positives and negatives), drawing from the step's
    generator."""

    def __call__(self, matched_idxs):
        g = _generator()
        if g is None:
            return super().__call__(matched_idxs)
        pos_masks, neg_masks = [], []
        for matched in matched_idxs:
            positive = torch.where(matched >= 1)[0]
            negative = torch.where(matched == 0)[0]
            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)
            chosen = []
            for idx, k in ((positive, num_pos), (negative, num_neg)):
                mask = torch.zeros_like(matched, dtype=torch.uint8)
                mask[idx[torch.randperm(idx.numel(), generator=g)[:k].to(idx.device)]] = 1
                chosen.append(mask)
            pos_masks.append(chosen[0])
            neg_masks.append(chosen[1])
        return pos_masks, neg_masks


class StepTransform(StretchingTransform):
    """The model's transform; the training size (scale jitter) drawn from the step's generator."""

    def torch_choice(self, k):
        g = _generator()
        if g is None:
            return super().torch_choice(k)
        return k[int(torch.randint(len(k), (1,), generator=g))]


def draw_per_step(model: MaskRCNN) -> None:
    """Let ``model``'s training forward draw from the step's generator (see drawing_from)."""
    model.transform.__class__ = StepTransform
    for sampler in (model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler):
        sampler.__class__ = StepSampler
