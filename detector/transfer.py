"""Weights from another model: every shape-compatible tensor, and the predictors' class and
keypoint rows matched by name (COCO's "person" row becomes the project's "person")."""

from __future__ import annotations

import torch
from torch import nn

from .domain import Category
from .heads import keypoint_slices

_PREDICTOR_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.",
                       "roi_heads.keypoint_predictor.")


def _remap_rows(name: str, src: torch.Tensor, dst: torch.Tensor, rows: dict[int, int]) -> torch.Tensor:
    """Copy class (or keypoint) rows of a predictor tensor from src to dst: rows maps dst->src."""
    out = dst.clone()
    per = 4 if "bbox_pred" in name else 1
    dim = 1 if "kps_score_lowres.weight" in name else 0
    for d, s in rows.items():
        if (s + 1) * per <= src.shape[dim] and (d + 1) * per <= dst.shape[dim]:
            out.narrow(dim, d * per, per).copy_(src.narrow(dim, s * per, per))
    return out


def transfer_weights(model: nn.Module, src_state: dict[str, torch.Tensor],
                     class_rows: dict[int, int], keypoint_rows: dict[int, int]) -> dict[str, int]:
    """Load every shape-compatible tensor; predictor rows only where the names match."""
    dst = model.state_dict()
    loaded, remapped, skipped = 0, 0, 0
    new_state = {}
    for k, v in dst.items():
        s = src_state.get(k)
        if s is None:
            skipped += 1
            continue
        if k.startswith(_PREDICTOR_PREFIXES):
            rows = keypoint_rows if "keypoint_predictor" in k else class_rows
            if rows:
                new_state[k] = _remap_rows(k, s, v, rows)
                remapped += 1
            else:
                skipped += 1
        elif s.shape == v.shape:
            new_state[k] = s
            loaded += 1
        else:
            skipped += 1
    model.load_state_dict(new_state, strict=False)
    return {"loaded": loaded, "remapped": remapped, "skipped": skipped}


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", " ")


def class_rows_by_name(dst: tuple[Category, ...], src_names: list[str]) -> dict[int, int]:
    """dst label -> src label for categories whose names match (background always 0 -> 0)."""
    idx = {_norm(n): i for i, n in enumerate(src_names)}
    rows = {0: 0}
    for i, c in enumerate(dst):
        j = idx.get(_norm(c.name))
        if j is not None:
            rows[i + 1] = j
    return rows


def keypoint_rows_by_name(dst: tuple[Category, ...], src: tuple[Category, ...]) -> dict[int, int]:
    """dst keypoint channel -> src channel where (category, keypoint) names match."""
    src_pos = {}
    for lab, sl in keypoint_slices(src).items():
        c = src[lab - 1]
        for j, kp in enumerate(c.keypoints):
            src_pos[(_norm(c.name), _norm(kp))] = sl.start + j
    rows = {}
    for lab, sl in keypoint_slices(dst).items():
        c = dst[lab - 1]
        for j, kp in enumerate(c.keypoints):
            s = src_pos.get((_norm(c.name), _norm(kp)))
            if s is not None:
                rows[sl.start + j] = s
    return rows
