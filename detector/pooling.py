"""RoI Align over the feature pyramid, with a parallel backward pass on the CPU.

torchvision's CPU ``roi_align`` runs its forward pass on all cores but its backward pass on one
(one loop over the regions): about a fifth of a CPU training step. Here the regions are split
into one chunk per core and torchvision's own backward kernel runs on each chunk in a thread
(torch ops release the GIL); the gradients are summed. Same kernel, same numbers up to the order
of the sums (tested against torchvision's op). On a GPU, and without gradients, it is exactly
torchvision's ``MultiScaleRoIAlign``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import initLevelMapper

_POOL: ThreadPoolExecutor | None = None
MIN_REGIONS_PER_CHUNK = 16


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="loupe-roialign")
    return _POOL


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, scale: float, ph: int, pw: int, ratio: int,
                aligned: bool) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.meta = (tuple(features.shape), scale, ph, pw, ratio, aligned)
        return torch.ops.torchvision.roi_align(features, rois, scale, ph, pw, ratio, aligned)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rois,) = ctx.saved_tensors
        (n, c, h, w), scale, ph, pw, ratio, aligned = ctx.meta
        grad = grad.contiguous()
        parts = min(torch.get_num_threads(), max(1, len(rois) // MIN_REGIONS_PER_CHUNK))

        def chunk(a: int, b: int) -> Tensor:
            return torch.ops.torchvision._roi_align_backward(grad[a:b], rois[a:b], scale, ph, pw, n, c, h, w,
                                                              ratio, aligned)

        if parts <= 1:
            total = chunk(0, len(rois))
        else:
            bounds = [len(rois) * i // parts for i in range(parts + 1)]
            futures = [_pool().submit(chunk, a, b) for a, b in zip(bounds, bounds[1:])]
            total = futures[0].result()
            for f in futures[1:]:
                total = total + f.result()
        return total, None, None, None, None, None, None


def roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool = False) -> Tensor:
    """torchvision's ``roi_align`` (``rois``: K x 5, batch index first), backward split over cores."""
    return _RoIAlign.apply(features, rois, float(spatial_scale), int(output_size[0]), int(output_size[1]),
                           int(sampling_ratio), bool(aligned))


class PyramidRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` (same levels and sampling) whose CPU backward uses every core.

    The levels' scales are the pyramid's strides (1/4 ... 1/32 for the ResNet FPNs here), fixed
    when built. torchvision infers them on the first call from the feature maps' size against the
    largest image of that call, and keeps them: a first call with only a small image of a padded
    batch (a part of a batch split over threads, detector/training.py) rounded stride 4 to 2, and
    every later region was pooled from the wrong place.
    """

    def __init__(self, featmap_names: list[str], output_size: int, sampling_ratio: int,
                 strides: tuple[int, ...] = (4, 8, 16, 32), **kwargs):
        super().__init__(featmap_names, output_size, sampling_ratio, **kwargs)
        if len(strides) != len(featmap_names):
            raise ValueError(f"one stride per pooled level: {featmap_names} and {strides}")
        self.scales = [1.0 / s for s in strides]
        self.map_levels = initLevelMapper(int(math.log2(strides[0])), int(math.log2(strides[-1])),
                                          self.canonical_scale, self.canonical_level)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = [x[k] for k in self.featmap_names]
        if feats[0].device.type != "cpu" or not torch.is_grad_enabled() or len(feats) < 2:
            return super().forward(x, boxes, image_shapes)
        # Under CPU bfloat16 autocast the pooling runs in float32, as torchvision's autocast
        # wrapper does on a GPU (the boxes are float32; sampling positions need the precision).
        feats = [f.float() for f in feats]
        boxes = [b.float() for b in boxes]
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for lvl, (f, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == lvl)[0]
            if len(idx):
                out[idx] = roi_align(f, rois[idx], self.output_size, scale, self.sampling_ratio).to(out.dtype)
        return out
