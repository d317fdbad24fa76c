"""RoI Align over the feature pyramid, with a parallel backward pass on the CPU.

torchvision's CPU ``roi_align`` runs its forward pass on all cores but its backward pass on one
(one loop over the regions): about a fifth of a CPU training step. Here the regions are split
into one chunk per core and torchvision's own backward kernel runs on each chunk in a thread
(torch ops release the GIL); the gradients are summed. Same kernel, same numbers up to the order
of the sums (tested against torchvision's op). On a GPU, and without gradients, it is exactly
torchvision's ``MultiScaleRoIAlign``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign

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
    """``MultiScaleRoIAlign`` (same levels, scales and sampling) whose CPU backward uses every core."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = [x[k] for k in self.featmap_names]
        if feats[0].device.type != "cpu" or not torch.is_grad_enabled() or len(feats) < 2:
            return super().forward(x, boxes, image_shapes)
        # Under CPU bfloat16 autocast the pooling runs in float32, as torchvision's autocast
        # wrapper does on a GPU (the boxes are float32; sampling positions need the precision).
        feats = [f.float() for f in feats]
        boxes = [b.float() for b in boxes]
        if self.scales is None or self.map_levels is None:
            super().forward(x, [b[:0] for b in boxes], image_shapes)  # torchvision sets up the levels
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((len(rois), feats[0].shape[1], *self.output_size))
        for lvl, (f, scale) in enumerate(zip(feats, self.scales)):
            idx = torch.where(levels == lvl)[0]
            if len(idx):
                out[idx] = roi_align(f, rois[idx], self.output_size, scale, self.sampling_ratio).to(out.dtype)
        return out
