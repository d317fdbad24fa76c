"""Mask pasting and RLE encoding: the box-only and batched paths give the full-image answer."""

import numpy as np
import pytest
import torch

from detector import masks as M
from detector.inference import Predictor, paste_mask, paste_runs
from detector.model import ModelConfig, build_model
from detector.synthetic import CATEGORIES

from conftest import FAST


def test_crop_encoding_equals_full_image_encoding():
    rng = np.random.default_rng(0)
    for trial in range(2000):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        y1, x1 = int(rng.integers(y0 + 1, h + 1)), int(rng.integers(x0 + 1, w + 1))
        if trial % 3 == 0:  # whole columns: runs that cross from one column into the next
            y0, y1 = 0, h
        crop = (rng.random((y1 - y0, x1 - x0)) < rng.random()).astype(np.uint8)
        full = np.zeros((h, w), np.uint8)
        full[y0:y1, x0:x1] = crop
        assert M.encode_crop(crop, x0, y0, h, w) == M.encode(full), (h, w, y0, y1, x0, x1)


def _random_boxes(gen, n, h, w):
    c = torch.rand(n, 2, generator=gen) * torch.tensor([w * 1.2, h * 1.2]) - torch.tensor([w * 0.1, h * 0.1])
    size = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8]) + 0.3
    return torch.cat([c - size / 2, c + size / 2], 1)


def test_batched_paste_equals_one_mask_at_a_time():
    """paste_runs (the GPU path, run here on the CPU) gives paste_mask's pixels exactly,
    including boxes partly or wholly outside the image and boxes under a pixel wide."""
    gen = torch.Generator().manual_seed(0)
    h, w = 97, 131
    checked = 0
    for trial in range(60):
        n = 1 + trial % 9
        probs = torch.sigmoid(torch.randn(n, 28, 28, generator=gen) * 4)
        boxes = _random_boxes(gen, n, h, w)
        boxes[0] = torch.tensor([-50.0, -50, -20, -20]) if trial % 5 == 0 else boxes[0]
        # a small chunk size so that several chunks are stitched together
        runs = paste_runs(probs, boxes, h, w, max_elements=4000 if trial % 2 else 1 << 25)
        assert len(runs) == n
        for i in range(n):
            crop, x0, y0 = paste_mask(probs[i], boxes[i].numpy(), h, w)
            want = M.encode_crop(crop, x0, y0, h, w)
            assert M.from_transitions(runs[i], h, w) == want
            checked += int(crop.sum())
    assert checked > 10_000  # the masks were not all empty


@pytest.mark.slow
def test_predictor_gives_the_same_instances_with_either_paste():
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", min_size=96, max_size=128, **FAST)
    det = build_model(categories=CATEGORIES, weights="none", config=cfg)
    # Random weights find many boxes of all sizes: a hard case for pasting.
    arrays = [np.random.default_rng(i).integers(0, 255, (90, 120, 3), dtype=np.uint8) for i in range(3)]
    one = Predictor(det, "cpu", paste_on_device=False).predict(arrays)
    batched = Predictor(det, "cpu", paste_on_device=True).predict(arrays)
    assert sum(len(x) for x in one) > 10
    assert one == batched
