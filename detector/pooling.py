"""RoI Align over the feature pyramid, its CPU gradient as two matrix products.

torchvision's CPU ``roi_align`` runs its backward pass on one core, one region at a time: 45-75 ms
for one image's 14 x 14 mask regions in a CPU training step (bench/RESULTS.md). RoI Align is
separable: a bin's value is the mean of bilinear samples on a grid of rows and columns, and a
bilinear weight is a row weight times a column weight, so each region's output is
``Ay @ F @ Ax.T`` for every channel, with ``Ay`` (output rows x feature rows) and ``Ax`` (output
columns x feature columns) holding the mean sampling weights. Those matrices are built here as
torchvision's kernel samples (the same points, border rules and count), and the gradient is their
products transposed, one image at a time, on every core (tested against torchvision's kernel's
gradients in float64). The forward stays torchvision's kernel (faster than the products). On a
GPU, and without gradients (inference), it is torchvision's ``MultiScaleRoIAlign`` as it is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import initLevelMapper


def _axis_weights(start: Tensor, size: Tensor, bins: int, ratio: int, length: int) -> Tensor:
    """(regions, bins, length): the mean weight of each feature row (or column) in each bin,
    sampled as torchvision's ``roi_align`` kernel samples (``ratio`` points a bin, a point
    beyond -1 or ``length`` counts as zero, points below 0 are read at 0, the last row repeats)."""
    dtype = start.dtype
    step = size / bins
    where = (torch.arange(bins, dtype=dtype)[None, :, None]
             + ((torch.arange(ratio, dtype=dtype) + 0.5) / ratio)[None, None, :])
    pos = start[:, None, None] + where * step[:, None, None]  # regions, bins, ratio
    inside = ((pos >= -1.0) & (pos <= length)).to(dtype) / ratio
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    last = low >= length - 1
    low = torch.where(last, torch.full_like(low, length - 1), low)
    frac = torch.where(last, torch.zeros_like(pos), pos - low.to(dtype))
    high = torch.where(last, low, low + 1)
    weights = start.new_zeros((len(start), bins, length))
    weights.scatter_add_(2, low, (1.0 - frac) * inside)
    weights.scatter_add_(2, high, frac * inside)
    return weights


def _support(wy: Tensor, wx: Tensor) -> tuple[int, int, int, int] | None:
    """The rows and columns some region's samples read (r0, r1, c0, c1), or None: none."""
    rows, cols = torch.where(wy.sum((0, 1)) > 0)[0], torch.where(wx.sum((0, 1)) > 0)[0]
    if not len(rows) or not len(cols):
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _weights(shape, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int,
             aligned: bool, dtype) -> tuple[Tensor, Tensor]:
    """Each region's row and column weights (regions x bins x rows / columns of the map)."""
    _, _, h, w = shape
    offset = 0.5 if aligned else 0.0
    x0, y0 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    width, height = rois[:, 3] * spatial_scale - offset - x0, rois[:, 4] * spatial_scale - offset - y0
    if not aligned:
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    ay = _axis_weights(y0, height, output_size[0], sampling_ratio, h).to(dtype)
    ax = _axis_weights(x0, width, output_size[1], sampling_ratio, w).to(dtype)
    return ay, ax


# The backward's products take this many regions at a time: their intermediate holds channels x
# rows x regions x bins numbers (a COCO model's 256 channels over an 800 px image's stride-4 rows
# and 128 mask regions would be ~370 MB at once; 32 keep it under ~100 MB).
REGIONS_PER_PRODUCT = 32


class _RoIAlign(torch.autograd.Function):
    """Forward: torchvision's kernel (already on every core). Backward: the separable weights'
    products, transposed: for each image, (rows x bins) @ the output gradient, then @ (bins x
    columns), over the rows and columns its regions read, REGIONS_PER_PRODUCT at a time."""

    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, scale: float, ph: int, pw: int, ratio: int,
                aligned: bool) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.meta = (tuple(features.shape), features.dtype, scale, ph, pw, ratio, aligned)
        return torch.ops.torchvision.roi_align(features, rois, scale, ph, pw, ratio, aligned)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rois,) = ctx.saved_tensors
        shape, dtype, scale, ph, pw, ratio, aligned = ctx.meta
        n, c, _, _ = shape
        ay, ax = _weights(shape, rois, (ph, pw), scale, ratio, aligned, grad.dtype)
        out = grad.new_zeros(shape)
        image = rois[:, 0].long()
        for b in range(n):
            for idx in torch.where(image == b)[0].split(REGIONS_PER_PRODUCT):
                box = _support(ay[idx], ax[idx])
                if box is None:
                    continue
                r0, r1, c0, c1 = box
                wy, wx, k = ay[idx, :, r0:r1], ax[idx, :, c0:c1], len(idx)
                g = grad[idx].permute(0, 2, 1, 3).reshape(k, ph, c * pw)  # regions, bins_y, (channel, bins_x)
                u = torch.bmm(wy.transpose(1, 2), g)  # regions, rows, (channel, bins_x)
                u = u.reshape(k, r1 - r0, c, pw).permute(2, 1, 0, 3).reshape(c * (r1 - r0), k * pw)
                out[b, :, r0:r1, c0:c1] += (u @ wx.reshape(k * pw, c1 - c0)).reshape(c, r1 - r0, c1 - c0)
        return out.to(dtype), None, None, None, None, None, None


def roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
              sampling_ratio: int, aligned: bool = False) -> Tensor:
    """torchvision's ``roi_align`` (``rois``: K x 5, batch index first; ``sampling_ratio`` > 0)
    with its gradient as matrix products on every core."""
    if sampling_ratio <= 0:
        raise ValueError("the separable RoI Align needs a fixed sampling_ratio (> 0)")
    return _RoIAlign.apply(features, rois, float(spatial_scale), int(output_size[0]), int(output_size[1]),
                           int(sampling_ratio), bool(aligned))


class PyramidRoIAlign(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign`` (same levels and sampling) whose CPU training pass is ``roi_align``
    above: the backward on every core instead of one.

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
        if (feats[0].device.type != "cpu" or not torch.is_grad_enabled() or len(feats) < 2
                or self.sampling_ratio <= 0):
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
                out = out.index_copy(0, idx, roi_align(f, rois[idx], self.output_size, scale, self.sampling_ratio))
        return out


class _MaxPoolChannelsLast(torch.autograd.Function):
    """The forward in channels-last memory (vectorised over channels: ~4x faster on a CPU than
    the planar kernel), the backward with the planar kernel and the same indices."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
        out, idx = torch.nn.functional.max_pool2d(x.contiguous(memory_format=torch.channels_last), kernel,
                                                  stride, padding, return_indices=True)
        out, idx = out.contiguous(), idx.contiguous()
        ctx.save_for_backward(x, idx)
        ctx.meta = (kernel, stride, padding)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, idx = ctx.saved_tensors
        k, s, p = ctx.meta
        gx = torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), x, [k, k], [s, s], [p, p],
                                                             [1, 1], False, idx)
        return gx, None, None, None


class StemMaxPool(torch.nn.MaxPool2d):
    """A ResNet stem's max pool (3 x 3, stride 2; no parameters). On a CPU the planar kernel took
    20-34 ms for a batch of two 288 x 384 inputs' stem maps, a training step's largest single
    operation after the convolutions; channels-last gives the same values and indices
    (tests/test_pooling.py). Elsewhere torchvision's as it is."""

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return _MaxPoolChannelsLast.apply(x, self.kernel_size, self.stride, self.padding)
