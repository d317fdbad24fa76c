"""The CPU RoI Align as matrix products gives torchvision's outputs and gradients."""

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
            assert torch.allclose(ours, ref, atol=3e-5), (ours - ref).abs().max()  # float32 rounding only
            for a, b in zip(our_grads, ref_grads):
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (a - b).abs().max()  # float32 sums
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
    assert torch.allclose(ours(feats, boxes, small), right, atol=3e-5)  # and with gradients (the products)


def test_in_double_precision_the_products_are_torchvisions_kernel(monkeypatch):
    """Same sample points, border rules and counts: in float64 the two agree to rounding (the
    float32 tests above allow for float32's), for both alignments and any sampling ratio, with
    regions partly or wholly outside the map and regions under a pixel. The gradient of a linear
    map for random output weights is its transpose applied to them: equal gradients mean the
    products' sampling weights are the kernel's."""
    from detector import pooling
    from detector.pooling import roi_align

    g = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 3, 13, 17, generator=g, dtype=torch.float64, requires_grad=True)
    xy = torch.rand(60, 2, generator=g, dtype=torch.float64) * 90 - 15
    wh = torch.rand(60, 2, generator=g, dtype=torch.float64) * 50
    wh[:10] *= 0.02  # smaller than a feature pixel
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=g).double(), xy, xy + wh], 1)
    rois[-1, 1:] = torch.tensor([300.0, 300.0, 340.0, 330.0])  # wholly outside: zeros
    for aligned, ratio, chunk in [(a, r, 32) for a in (False, True) for r in (1, 2, 3)] + [(False, 2, 7)]:
        monkeypatch.setattr(pooling, "REGIONS_PER_PRODUCT", chunk)  # 7: an image's ~30 regions in parts
        ref = torch.ops.torchvision.roi_align(feats, rois, 0.25, 5, 4, ratio, aligned)
        ours = roi_align(feats, rois, (5, 4), 0.25, ratio, aligned)
        w = torch.randn_like(ref)
        (a,) = torch.autograd.grad((ref * w).sum(), feats)
        (b,) = torch.autograd.grad((ours * w).sum(), feats)
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
        assert float(ref[-1].detach().abs().sum()) == 0.0 and float(a.abs().sum()) > 0


def test_the_stem_max_pool_gives_torchvisions_values_indices_and_gradients():
    from detector.pooling import StemMaxPool

    g = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.relu(torch.randn(2, 5, 23, 30, generator=g)).to(dtype)  # ties at 0, as after a ReLU
        x[0, 0, :4, :4] = 1.0  # and ties between equal values
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ref = torch.nn.MaxPool2d(3, 2, 1)(a)
        ours = StemMaxPool(3, 2, 1)(b)
        assert torch.equal(ours, ref) and ours.is_contiguous()
        w = torch.randn(ref.shape, generator=g).to(dtype)
        (ref * w).sum().backward()
        (ours * w).sum().backward()
        assert torch.equal(a.grad, b.grad)
        with torch.no_grad():
            assert torch.equal(StemMaxPool(3, 2, 1)(x), ref)
