"""Pretrained starting models: torchvision's COCO Mask R-CNN from its cache, a download, or a file.

- Where torchvision keeps it: ``$TORCH_HOME/hub/checkpoints/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth``;
  the 8 hex digits in the name are the start of the file's SHA-256 (``torch.hub``'s check), so a
  partial or corrupt file is recognised and never loaded.
- ``download`` fetches it in chunks into ``NAME.partial`` (resumed with an HTTP Range request when a
  partial file is there), reports progress, stops when cancelled, checks the hash, then renames.
- ``coco_start`` turns it into a Loupe checkpoint for a project through a class mapping
  (COCO class -> project category, as CVAT does when running a model): only mapped classes are
  kept, several COCO classes may map to one category, and the mapping is saved in the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.models.detection import KeypointRCNN_ResNet50_FPN_Weights, MaskRCNN_ResNet50_FPN_V2_Weights

from .domain import Category
from .errors import LoupeError
from .train_config import DEFAULT_BACKBONE
from .model import (Detector, ModelConfig, _architecture, _coco_keypoints, keypoint_slices, save_checkpoint,
                    transfer_weights)

MASK_WEIGHTS = MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1
KEYPOINT_WEIGHTS = KeypointRCNN_ResNet50_FPN_Weights.COCO_V1
COCO_NAMES: list[str] = list(MASK_WEIGHTS.meta["categories"])  # index = COCO model label
SIZE_MB = 170


class WeightsError(LoupeError):
    """Weights that cannot be had or used; the message names the file and what to do."""


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(which: str = "mask") -> Path:
    w = MASK_WEIGHTS if which == "mask" else KEYPOINT_WEIGHTS
    return cache_dir() / os.path.basename(w.url)


# File name -> SHA-256 prefix, where it is not the one the name carries (tests put their own
# COCO-shaped files under torchvision's names and register them here).
KNOWN_HASHES: dict[str, str] = {}


def expected_hash_prefix(path: Path) -> str | None:
    """The SHA-256 prefix torchvision's file names carry (``name-<hex>.pth``), if any."""
    if path.name in KNOWN_HASHES:
        return KNOWN_HASHES[path.name]
    m = re.search(r"-([0-9a-f]{8,64})\.pth?$", path.name)
    return m.group(1) if m else None


def file_hash_ok(path: Path, named: Path | None = None) -> bool:
    """True when the file's SHA-256 starts with the prefix its name (or ``named``'s) carries, or
    the name carries none."""
    prefix = expected_hash_prefix(named or path)
    if prefix is None:
        return True
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest().startswith(prefix)


def offline_help(which: str = "mask") -> str:
    """What an offline user copies where."""
    w = MASK_WEIGHTS if which == "mask" else KEYPOINT_WEIGHTS
    return (f"On a machine with internet, download {w.url} ({SIZE_MB} MB) and copy it, name unchanged, "
            f"to {cache_path(which)} ; or use Model > Load weights… on any copy of it.")


def download(url: str, dest: Path, *, progress: Callable[[int, int], None] | None = None,
             cancel: threading.Event | None = None, chunk: int = 1 << 20,
             opener: Callable[..., object] = urllib.request.urlopen, offline_text: str | None = None,
             timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``dest``, resuming ``dest.partial``; hash-checked before it is renamed.

    ``progress(done_bytes, total_bytes)`` is called once the server answers and after each chunk
    (total 0 when unknown).
    Cancelling keeps the partial file for the next try. A file whose hash does not match is
    deleted and the error says so. ``offline_text``: what the error tells a person without internet
    to do (default: where COCO's file goes); ``timeout``: seconds to wait for the server.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".partial")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = opener(req, timeout=timeout)
    except OSError as exc:
        raise WeightsError(f"{url}: cannot download ({exc}). {offline_text or offline_help()}") from exc
    with resp:
        status = getattr(resp, "status", 200)
        if have and status != 206:  # the server ignored the range: start again
            have = 0
        length = int(resp.headers.get("Content-Length") or 0)
        total = have + length if length else 0
        with open(part, "ab" if have else "wb") as f:
            done = have
            if progress is not None:
                progress(done, total)
            while True:
                if cancel is not None and cancel.is_set():
                    raise WeightsError(f"{dest.name}: download cancelled; {done >> 20} MB kept, "
                                       "the next try resumes")
                block = resp.read(chunk)
                if not block:
                    break
                f.write(block)
                done += len(block)
                if progress is not None:
                    progress(done, total)
    if not file_hash_ok(part, named=dest):
        part.unlink()
        raise WeightsError(f"{dest.name}: the downloaded file is corrupt (its SHA-256 does not start with "
                           f"{expected_hash_prefix(dest)}); deleted, try again")
    os.replace(part, dest)
    return dest


def cached(url: str, path: Path, *, offline_text: str | None = None,
           progress: Callable[[str, int, int], None] | None = None, cancel: threading.Event | None = None) -> Path:
    """``path`` (in torchvision's cache), downloaded from ``url`` first when it is not there, or
    WeightsError. Never tried with LOUPE_OFFLINE=1; the 10 s timeout bounds a silent network
    (torch.hub's own download waits forever). ``progress(file name, bytes done, bytes in all or 0)``
    and ``cancel``: as ``download``'s."""
    if path.is_file():
        return path
    if os.environ.get("LOUPE_OFFLINE") == "1":
        raise WeightsError(f"{path.name} is not in torchvision's cache ({path.parent}); downloads are off "
                           "(LOUPE_OFFLINE=1)")
    try:
        named = (lambda done, total: progress(path.name, done, total)) if progress is not None else None
        return download(url, path, offline_text=offline_text, timeout=10.0, progress=named, cancel=cancel)
    except OSError as exc:  # a connection cut while reading
        raise WeightsError(f"{url}: download failed ({exc})") from exc


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A dict of tensors from ``path``, read with ``weights_only=True`` after the hash its name
    carries is checked (``{"model": ...}`` and ``{"state_dict": ...}`` wrappers opened), or a
    WeightsError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: file not found")
    if not file_hash_ok(path):
        raise WeightsError(f"{path}: corrupt or partial (its SHA-256 does not start with "
                           f"{expected_hash_prefix(path)}, as its name says); delete it and fetch it again")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # junk bytes reach the unpickler's every error path
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise WeightsError(f"{path}: not a readable weights file ({first})") from exc
    for key in ("model", "state_dict"):  # torchvision's reference scripts save {"model": ..., "optimizer": ...}
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return sd


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A torchvision Mask R-CNN state dict from ``path`` (``weights_only=True``), or a clear refusal."""
    sd = read_tensors(path)
    if "roi_heads.box_predictor.cls_score.weight" not in sd or "backbone.body.conv1.weight" not in sd:
        raise WeightsError(f"{path}: not a torchvision Mask R-CNN state dict (no box predictor or backbone)")
    return sd


def default_mapping(project_categories: list[Category] | tuple[Category, ...]) -> dict[str, str]:
    """COCO class -> project category for names that match (case, '_' and spaces ignored)."""
    norm = {c.name.strip().lower().replace("_", " "): c.name for c in project_categories}
    return {n: norm[n.lower()] for n in COCO_NAMES if n.lower() in norm}


def saved_mapping(project) -> dict[str, str] | None:
    """The class mapping this project used last (``coco_start`` saves it), if any."""
    raw = project.get_meta("coco_mapping")
    return json.loads(raw) if raw else None


def coco_start(project, mapping: dict[str, str], output: str | os.PathLike, *,
               weights_file: str | os.PathLike | None = None, add_missing: bool = True,
               activate: bool = True) -> Detector:
    """A Loupe checkpoint (and model version) that predicts the mapped COCO classes as project categories.

    ``mapping``: COCO class name -> project category name. Categories missing from the project are
    added when ``add_missing`` (the empty-project case), else refused.
    """
    unknown = [n for n in mapping if n not in COCO_NAMES or n in ("__background__", "N/A")]
    if unknown:
        raise WeightsError(f"not COCO classes: {', '.join(unknown)}")
    if not mapping:
        raise WeightsError("map at least one COCO class to a category")
    path = Path(weights_file) if weights_file else cache_path("mask")
    if not path.is_file():
        raise WeightsError(f"{path}: torchvision's COCO Mask R-CNN is not there. {offline_help()}")
    sd = read_state_dict(path)
    have = {c.name: c for c in project.categories()}
    for target in dict.fromkeys(mapping.values()):
        if target not in have:
            if not add_missing:
                raise WeightsError(f"category {target!r} is not in the project")
            have[target] = project.ensure_category(Category(target, _colour(len(have))))
    # One model label per mapped COCO class, in COCO order; each carries its target's keypoints.
    coco_classes = [n for n in COCO_NAMES if n in mapping]
    cats = tuple(Category(n, have[mapping[n]].color, have[mapping[n]].keypoints, have[mapping[n]].skeleton)
                 for n in coco_classes)
    cfg = ModelConfig(backbone=DEFAULT_BACKBONE)
    nk = sum(len(c.keypoints) for c in cats)
    model = _architecture(len(cats) + 1, nk, cfg)
    rows = {0: 0, **{i + 1: COCO_NAMES.index(n) for i, n in enumerate(coco_classes)}}
    transfer_weights(model, sd, rows, {})
    notice = f"torchvision's COCO Mask R-CNN ({path.name}); " + ", ".join(
        f"{k} -> {v}" if k != v else k for k, v in mapping.items())
    det = Detector(model, cats, cfg, notice, {"weights": "coco", "from_scratch": False})
    if nk:
        det.notice += _coco_keypoints(model, cats)
    meta = {"category_map": dict(mapping), "notice": det.notice, "from_random_init": False,
            "source_weights": str(path)}
    save_checkpoint(output, det, **meta)
    project.set_meta("coco_mapping", json.dumps(mapping))
    det.meta.update(meta)
    project.add_model("coco", str(output), {}, {"weights": "coco", "mapping": dict(mapping)}, 0,
                      activate=activate)
    return det


def _colour(i: int) -> str:
    palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
               "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324"]
    return palette[i % len(palette)]


__all__ = ["COCO_NAMES", "WeightsError", "cache_path", "coco_start", "default_mapping", "download",
           "file_hash_ok", "keypoint_slices", "offline_help", "read_state_dict", "saved_mapping"]
