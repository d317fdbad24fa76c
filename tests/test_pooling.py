"""The CPU RoI Align with a parallel backward gives torchvision's outputs and gradients."""

import torch
from torchvision.ops import MultiScaleRoIAlign

from detector.pooling import PyramidRoIAlign


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    sizes = {"0": (40, 56), "1": (20, 28), "2": (10, 14), "3": (5, 7)}
    feats = {k: torch.randn(2, 8, h, w, generator=g, requires_grad=True) for k, (h, w) in sizes.items()}
    boxes = []
    for _ in range(2):
        xy = torch.rand(90, 2, generator=g) * torch.tensor([200.0, 140.0])
        wh = torch.rand(90, 2, generator=g) * torch.tensor([180.0, 120.0]) + 1
        boxes.append(torch.cat([xy, xy + wh], 1))
    return feats, boxes, [(160, 224), (150, 210)]


def _grads(loss, feats):
    got = torch.autograd.grad(loss, list(feats.values()), allow_unused=True)
    return [torch.zeros_like(f) if g is None else g for g, f in zip(got, feats.values())]


def test_outputs_and_gradients_match_torchvision():
    for seed in range(3):
        for size in (7, 14):
            feats, boxes, shapes = _inputs(seed)
            ref_pool, ours_pool = MultiScaleRoIAlign(list(feats), size, 2), PyramidRoIAlign(list(feats), size, 2)
            ref = ref_pool(feats, boxes, shapes)
            w = torch.randn_like(ref)
            ref_grads = _grads((ref * w).sum(), feats)
            ours = ours_pool(feats, boxes, shapes)
            our_grads = _grads((ours * w).sum(), feats)
            assert torch.allclose(ours, ref)  # the forward is torchvision's own kernel
            for a, b in zip(our_grads, ref_grads):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max()
            assert sum(float(g.abs().sum()) for g in ref_grads) > 0


def test_without_gradients_it_is_torchvision_exactly():
    feats, boxes, shapes = _inputs(7)
    with torch.no_grad():
        assert torch.equal(PyramidRoIAlign(list(feats), 7, 2)(feats, boxes, shapes),
                           MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, shapes))


def test_the_levels_scales_are_the_strides_whatever_the_first_images():
    """torchvision infers each level's scale on its first call, from the feature maps against the
    largest image of that call, and keeps it: a first call with one small image of a padded batch
    (a part of a batch split over threads) takes stride 4 for 2. Ours are the strides."""
    feats, boxes, _ = _inputs(3)  # level "0" is 40 x 56: a padded 160 x 224 input at stride 4
    small = [(90, 120), (80, 110)]  # both images much smaller than the padding
    boxes = [b.clamp(max=89) for b in boxes]
    padded = MultiScaleRoIAlign(list(feats), 7, 2)
    with torch.no_grad():
        right = padded(feats, boxes, [(160, 224)] * 2)  # set up from a full-size image: 1/4 ... 1/32
        wrong = MultiScaleRoIAlign(list(feats), 7, 2)(feats, boxes, small)
        assert not torch.allclose(wrong, right)  # torchvision's inference from the small images
        ours = PyramidRoIAlign(list(feats), 7, 2)
        assert ours.scales == [0.25, 0.125, 0.0625, 0.03125]
        assert torch.equal(ours(feats, boxes, small), right)
    assert torch.allclose(ours(feats, boxes, small), right)  # and with gradients (our kernel path)
