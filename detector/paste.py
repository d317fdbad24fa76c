"""Pasting the model's 28 x 28 mask probabilities into the image, inside each box only: no
``N x H x W`` float mask is ever built (torchvision's post-processing builds one)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def paste_mask(prob: torch.Tensor, box: np.ndarray, height: int, width: int
               ) -> tuple[np.ndarray, int, int]:
    """Paste one ``M x M`` mask probability map inside its box; returns (bool crop, x0, y0).

    Same geometry as torchvision's ``paste_masks_in_image`` (1-pixel pad, box expanded by
    ``(M + 2) / M``), but only the box region is ever allocated.
    """
    m = prob.shape[-1]
    scale = (m + 2.0) / m
    padded = F.pad(prob[None, None].float(), (1, 1, 1, 1))
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    hw, hh = (x2 - x1) * 0.5 * scale, (y2 - y1) * 0.5 * scale
    bx0, by0, bx1, by1 = int(cx - hw), int(cy - hh), int(cx + hw), int(cy + hh)
    w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
    resized = F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    x_0, x_1 = max(bx0, 0), min(bx1 + 1, width)
    y_0, y_1 = max(by0, 0), min(by1 + 1, height)
    if x_1 <= x_0 or y_1 <= y_0:
        return np.zeros((0, 0), dtype=bool), 0, 0
    crop = resized[y_0 - by0:y_1 - by0, x_0 - bx0:x_1 - bx0] > 0.5
    return crop.numpy(), x_0, y_0


def paste_runs(probs: torch.Tensor, boxes: torch.Tensor, height: int, width: int,
               max_elements: int = 1 << 25) -> list[np.ndarray]:
    """Paste, threshold and run-length-scan ``N x M x M`` mask probabilities on their own device.

    The batched form of ``paste_mask`` (same geometry, same bilinear weights in the same order):
    every mask is resampled only over its box, clipped to the image, in chunks of at most
    ``max_elements`` values, and only the positions where a mask changes value (column-major
    flat indices, see ``masks.from_transitions``) leave the device. On a GPU this replaces
    torchvision's per-mask CPU paste, which leaves the GPU idle.
    """
    n, m = probs.shape[0], probs.shape[-1]
    if n == 0:
        return []
    dev = probs.device
    size_in = m + 2
    padded = F.pad(probs.float(), (1, 1, 1, 1))
    b = boxes.to(dev, torch.float64)
    scale = (m + 2.0) / m
    cx, cy = (b[:, 0] + b[:, 2]) * 0.5, (b[:, 1] + b[:, 3]) * 0.5
    hw, hh = (b[:, 2] - b[:, 0]) * 0.5 * scale, (b[:, 3] - b[:, 1]) * 0.5 * scale
    bx0, by0 = (cx - hw).trunc().long(), (cy - hh).trunc().long()  # int() as paste_mask does
    bx1, by1 = (cx + hw).trunc().long(), (cy + hh).trunc().long()
    w_box, h_box = (bx1 - bx0 + 1).clamp(min=1), (by1 - by0 + 1).clamp(min=1)
    x_0, y_0 = bx0.clamp(min=0), by0.clamp(min=0)
    wc = ((bx1 + 1).clamp(max=width) - x_0).clamp(min=0)
    hc = ((by1 + 1).clamp(max=height) - y_0).clamp(min=0)
    width_max, height_max = int(wc.max()), int(hc.max())
    if width_max == 0 or height_max == 0:
        return [np.zeros(0, dtype=np.int64) for _ in range(n)]

    def source(start, length, out_size, count):
        # torch's upsample_bilinear2d (align_corners=False): float32 scale and source index.
        idx = start[:, None] + torch.arange(count, device=dev)[None]
        sc = torch.tensor(float(size_in), device=dev) / out_size.float()
        src = (sc[:, None] * (idx.float() + 0.5) - 0.5).clamp(min=0)
        i0 = src.long()
        i1 = torch.where(i0 < size_in - 1, i0 + 1, i0)
        l1 = src - i0.float()
        return i0.clamp(max=size_in - 1), i1.clamp(max=size_in - 1), 1.0 - l1, l1

    xi0, xi1, lx0, lx1 = source(x_0 - bx0, wc, w_box, width_max)
    yi0, yi1, ly0, ly1 = source(y_0 - by0, hc, h_box, height_max)
    col_ok = torch.arange(width_max, device=dev)[None] < wc[:, None]
    row_ok = torch.arange(height_max, device=dev)[None] < hc[:, None]
    per = max(1, max_elements // (width_max * (size_in + height_max)))
    flat_parts, owner_parts = [], []
    for s in range(0, n, per):
        e = min(n, s + per)
        p = padded[s:e]
        cols = lx0[s:e, None, :] * p.gather(2, xi0[s:e, None, :].expand(-1, size_in, -1)) \
            + lx1[s:e, None, :] * p.gather(2, xi1[s:e, None, :].expand(-1, size_in, -1))
        out = ly0[s:e, :, None] * cols.gather(1, yi0[s:e, :, None].expand(-1, -1, width_max)) \
            + ly1[s:e, :, None] * cols.gather(1, yi1[s:e, :, None].expand(-1, -1, width_max))
        on = (out > 0.5) & row_ok[s:e, :, None] & col_ok[s:e, None, :]
        framed = F.pad(on.transpose(1, 2).to(torch.int8), (1, 1))  # zero above and below each column
        k, j, i = torch.nonzero(torch.diff(framed, dim=2), as_tuple=True)
        flat_parts.append((x_0[s:e][k] + j) * height + (y_0[s:e][k] + i))
        owner_parts.append(k + s)
    flat = torch.cat(flat_parts).cpu().numpy()
    counts = torch.bincount(torch.cat(owner_parts), minlength=n).cpu().numpy()
    return np.split(flat, np.cumsum(counts)[:-1])
