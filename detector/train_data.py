"""What training reads: the reviewed images split into train and held out (stably, by path),
as torchvision detection targets with augmentation, batched by orientation and decoded ahead
of the model (on a thread, and on a GPU by worker processes too)."""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes
from torchvision.transforms import v2

from . import masks as M
from .domain import Category, ImageRecord, ImageStatus, Instance
from .errors import TrainingError
from .images import load_image
from .heads import scale_with_floor
from .model import keypoint_slices
from .threads import run_ahead as _prefetched  # noqa: F401 (the trainer's name for it)


def is_holdout(path: str, fraction: float) -> bool:
    """Stable split: the same image is held out every time, whatever else is in the project."""
    if fraction <= 0:
        return False
    h = int(hashlib.sha1(path.encode("utf-8")).hexdigest()[:8], 16)
    return (h % 10_000) < fraction * 10_000


def split_reviewed(project, holdout: float) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(train, held out) among the reviewed images; at least one image stays for training."""
    reviewed = project.images(ImageStatus.REVIEWED)
    train = [r for r in reviewed if not is_holdout(r.path, holdout)]
    held = [r for r in reviewed if is_holdout(r.path, holdout)]
    if not train and held:
        train, held = held[:1], held[1:]
    return train, held


@dataclass
class Sample:
    path: Path
    instances: list[Instance]
    width: int = 0
    height: int = 0


class LabelledImages(torch.utils.data.Dataset):
    """Images and their instances as torchvision detection targets, augmented with transforms v2."""

    def __init__(self, samples: list[Sample], categories: tuple[Category, ...], augment: bool, seed: int,
                 copy_paste: float = 0.0, rotate: float = 0.0):
        self.samples = samples
        self.copy_paste = copy_paste  # probability of pasting another image's objects (augment only)
        self.rotate = rotate  # largest rotation in degrees, drawn for half the images (augment only)
        self.label_of = {c.id: i + 1 for i, c in enumerate(categories)}
        self.categories = categories
        self.slices = keypoint_slices(categories)
        self.num_keypoints = sum(len(c.keypoints) for c in categories)
        flip = list(range(self.num_keypoints))
        for lab, sl in self.slices.items():
            perm = categories[lab - 1].flip_permutation()
            for j, p in enumerate(perm):
                flip[sl.start + j] = sl.start + p
        self.flip_perm = torch.tensor(flip, dtype=torch.long)
        self.augment = augment
        self.seed = seed
        self.rng = random.Random(seed)
        # (window px, min_size, max_size): with augment, a random window of about window x window
        # pixels at the model's scale (scale jitter included) instead of the whole image; the trainer
        # sets it and lets the model's transform skip its own resize (use_windows)
        self.windows: tuple[int, int, int] | None = None
        self.min_scale = 0.0  # the model's floor on the resize factor (ModelConfig.min_scale)

    def __len__(self) -> int:
        return len(self.samples)

    def _colour(self, image: torch.Tensor) -> torch.Tensor:
        """Colour jitter (brightness, contrast, saturation 0.7-1.3, hue +-0.03, random order)
        drawn from the dataset's own generator, so a seed gives the same run even while a
        prefetch thread and the model draw random numbers side by side."""
        F = v2.functional
        ops = [(F.adjust_brightness, self.rng.uniform(0.7, 1.3)),
               (F.adjust_contrast, self.rng.uniform(0.7, 1.3)),
               (F.adjust_saturation, self.rng.uniform(0.7, 1.3)),
               (F.adjust_hue, self.rng.uniform(-0.03, 0.03))]
        self.rng.shuffle(ops)
        for fn, factor in ops:
            image = fn(image, factor)
        return image

    def _read(self, i: int, size: tuple[int, int] | None = None):
        """(rgb, boxes N x 4, labels N, masks N x H x W bool, keypoints N x K x 3) of sample ``i``,
        resized to ``size`` (h, w) when given."""
        s = self.samples[i]
        rgb = load_image(s.path)
        h, w = rgb.shape[:2]
        insts = [x for x in s.instances if not x.crowd and x.category_id in self.label_of]
        masks = np.zeros((len(insts), h, w), dtype=bool)
        kps = torch.zeros((len(insts), self.num_keypoints, 3), dtype=torch.float32)
        for j, inst in enumerate(insts):
            masks[j] = M.decode(inst.mask) if inst.mask is not None else M.decode(M.from_box(inst.box, h, w))
            sl = self.slices.get(self.label_of[inst.category_id])
            if sl is not None and inst.keypoints:
                kps[j, sl] = torch.tensor(inst.keypoints, dtype=torch.float32)[: sl.stop - sl.start]
        boxes = np.array([x.box for x in insts], dtype=np.float32).reshape(-1, 4)
        labels = [self.label_of[x.category_id] for x in insts]
        if size is not None and size != (h, w):
            th, tw = size
            sx, sy = tw / w, th / h
            rgb = np.asarray(Image.fromarray(rgb).resize((tw, th), Image.BILINEAR))
            masks = np.stack([np.asarray(Image.fromarray(m).resize((tw, th), Image.NEAREST)) for m in masks]) \
                if len(masks) else np.zeros((0, th, tw), dtype=bool)
            boxes = boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
            kps[..., 0] *= sx
            kps[..., 1] *= sy
        return rgb, boxes, labels, masks, kps

    def _window(self, rgb, boxes, labels, masks, kps):
        """A random window of the image at the model's scale for it (what GeneralizedRCNNTransform
        would resize it to, times a scale-jitter factor 0.8-1.2 like the whole images'), about
        ``windows[0]`` pixels square (the whole side where the image is smaller). Objects keep
        what lies inside (at least 4 pixels); a window with a box's middle in it is preferred
        (five draws). Returns (rgb, boxes, labels, masks, kps) like _read, resized."""
        c, min_size, max_size = self.windows
        h, w = rgb.shape[:2]
        g = scale_with_floor(h, w, min_size, max_size, self.min_scale) * self.rng.choice((0.8, 0.9, 1.0, 1.1, 1.2))
        wh, ww = min(h, max(1, round(c / g))), min(w, max(1, round(c / g)))
        centres = [((y1 + y2) / 2, (x1 + x2) / 2) for x1, y1, x2, y2 in boxes.tolist()]
        for _ in range(5):
            y0, x0 = self.rng.randint(0, h - wh), self.rng.randint(0, w - ww)
            if any(y0 <= cy < y0 + wh and x0 <= cx < x0 + ww for cy, cx in centres):
                break
        th, tw = max(1, round(wh * g)), max(1, round(ww * g))
        part = np.ascontiguousarray(rgb[y0:y0 + wh, x0:x0 + ww])
        rgb = np.array(Image.fromarray(part).resize((tw, th), Image.BILINEAR))
        m = torch.from_numpy(np.ascontiguousarray(masks[:, y0:y0 + wh, x0:x0 + ww]))
        m = torch.nn.functional.interpolate(m[None].float(), size=(th, tw), mode="nearest")[0] > 0.5 \
            if len(m) else torch.zeros((0, th, tw), dtype=torch.bool)
        keep = m.flatten(1).sum(1) >= 4
        kps = kps[keep].clone()
        kps[..., 0] = (kps[..., 0] - x0) * (tw / ww)
        kps[..., 1] = (kps[..., 1] - y0) * (th / wh)
        outside = (kps[..., 0] < 0) | (kps[..., 0] >= tw) | (kps[..., 1] < 0) | (kps[..., 1] >= th)
        kps[outside] = 0.0  # a keypoint cut off by the window is not labelled there
        m = m[keep]
        labels = [lab for lab, k in zip(labels, keep.tolist()) if k]
        return rgb, _mask_boxes(m).numpy(), labels, m.numpy(), kps

    def _copy_paste(self, i: int, rgb, boxes, labels, masks, kps):
        """Simple Copy-Paste (Ghiasi et al., CVPR 2021): a random half of another image's objects,
        with their pixels, pasted over this one. What they cover is cut from the objects under
        them (an object left with under a fifth of its area is dropped, its box is refit to what
        is left, keypoints under the paste become unlabelled). More objects, in new company and
        on new backgrounds, from the same few reviewed images."""
        j = self.rng.randrange(len(self.samples) - 1)
        j += j >= i
        rgb2, boxes2, labels2, masks2, kps2 = self._read(j, rgb.shape[:2])
        chosen = [k for k in range(len(labels2)) if self.rng.random() < 0.5 and masks2[k].any()]
        if not chosen:
            return rgb, boxes, labels, masks, kps
        alpha = masks2[chosen].any(0)
        rgb = rgb.copy()
        rgb[alpha] = rgb2[alpha]
        area = masks.reshape(len(masks), -1).sum(1)
        masks = masks & ~alpha
        left = masks.reshape(len(masks), -1).sum(1)
        keep = left >= np.maximum(0.2 * area, 1)
        boxes = boxes.copy()
        for k in np.nonzero(keep & (left < area))[0]:
            ys, xs = np.nonzero(masks[k])
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        if self.num_keypoints and len(kps):
            x = kps[..., 0].round().long().clamp(0, rgb.shape[1] - 1)
            y = kps[..., 1].round().long().clamp(0, rgb.shape[0] - 1)
            under = torch.from_numpy(alpha)[y, x] & (kps[..., 2] > 0)
            kps = kps.clone()
            kps[under] = 0
        keep_t = torch.from_numpy(keep)
        return (rgb, np.concatenate([boxes[keep], boxes2[chosen]]),
                [lab for lab, ok in zip(labels, keep) if ok] + [labels2[k] for k in chosen],
                np.concatenate([masks[keep], masks2[chosen]]), torch.cat([kps[keep_t], kps2[chosen]]))

    @staticmethod
    def _rotated(image, mask_t, xy, vis, angle: float):
        """(image, boxes, masks, keypoint xy, visibility) turned by ``angle`` degrees about the
        centre (same canvas; the uncovered corners take the image's mean colour). Boxes are refit
        to the turned masks (a box turned with its object would grow by up to 40 %); keypoints
        turned out of the picture become unlabelled."""
        F = v2.functional
        fill = [float(v) for v in image.float().mean((1, 2))]
        image = F.rotate(image, angle, interpolation=v2.InterpolationMode.BILINEAR, fill=fill)
        mask_t = F.rotate(mask_t, angle, interpolation=v2.InterpolationMode.NEAREST, fill=0)
        n, k = xy.shape[:2]
        if n and k:
            h, w = image.shape[-2:]
            points = tv_tensors.KeyPoints(xy.reshape(-1, 2), canvas_size=(h, w))
            xy = F.rotate(points, angle).as_subclass(torch.Tensor).reshape(n, k, 2)
            inside = (xy[..., 0] >= 0) & (xy[..., 0] < w) & (xy[..., 1] >= 0) & (xy[..., 1] < h)
            vis = torch.where(inside, vis, torch.zeros_like(vis))
        return image, _mask_boxes(mask_t.as_subclass(torch.Tensor)), mask_t, xy, vis

    def __getitem__(self, i: int):
        rgb, boxes_np, labels, masks, kps = self._read(i)
        if self.augment and self.copy_paste > 0 and len(self.samples) > 1 and self.rng.random() < self.copy_paste:
            rgb, boxes_np, labels, masks, kps = self._copy_paste(i, rgb, boxes_np, labels, masks, kps)
        if self.augment and self.windows is not None:
            rgb, boxes_np, labels, masks, kps = self._window(rgb, boxes_np, labels, masks, kps)
        h, w = rgb.shape[:2]
        masks = masks.astype(np.uint8)
        image = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1))
        boxes = tv_tensors.BoundingBoxes(torch.from_numpy(boxes_np).reshape(-1, 4), format="XYXY", canvas_size=(h, w))
        mask_t = tv_tensors.Mask(torch.from_numpy(masks))
        n, k = len(labels), self.num_keypoints
        vis = kps[..., 2]
        points = tv_tensors.KeyPoints(kps[..., :2].reshape(-1, 2), canvas_size=(h, w))
        if self.augment:
            if self.rng.random() < 0.5:
                # Boxes, masks and keypoints move together; left/right keypoints swap names.
                flip = v2.functional.horizontal_flip
                image, boxes, mask_t, points = flip(image), flip(boxes), flip(mask_t), flip(points)
                xy = points.as_subclass(torch.Tensor).reshape(n, k, 2)[:, self.flip_perm]
                vis = vis[:, self.flip_perm]
            else:
                xy = points.as_subclass(torch.Tensor).reshape(n, k, 2)
            if self.rotate > 0 and self.rng.random() < 0.5:
                angle = self.rng.uniform(-self.rotate, self.rotate)
                image, boxes, mask_t, xy, vis = self._rotated(image, mask_t, xy, vis, angle)
            image = self._colour(image)
        else:
            xy = points.as_subclass(torch.Tensor).reshape(n, k, 2)
        kps = torch.cat([xy, vis[..., None]], dim=-1)
        labels = torch.tensor(labels, dtype=torch.int64)
        b = boxes.as_subclass(torch.Tensor)
        keep = (b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)  # torchvision rejects empty boxes
        target = {"boxes": b[keep], "labels": labels[keep],
                  "masks": mask_t.as_subclass(torch.Tensor)[keep]}
        if self.num_keypoints:
            target["keypoints"] = kps[keep]
        return image.as_subclass(torch.Tensor).float().div_(255), target


def _mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes of N x H x W masks at pixel edges, as the store's (torchvision's
    ``masks_to_boxes`` gives pixel centres); an empty mask gets an empty box, which the caller drops."""
    out = torch.zeros((len(masks), 4), dtype=torch.float32)
    filled = masks.flatten(1).any(1).bool()  # uint8 masks give uint8
    if filled.any():
        out[filled] = masks_to_boxes(masks[filled]).float() + torch.tensor([0.0, 0.0, 1.0, 1.0])
    return out


class AspectRatioBatches(torch.utils.data.Sampler):
    """Batches of images with the same orientation (landscape vs portrait), shuffled per epoch."""

    def __init__(self, groups: list[int], batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.groups, self.batch_size, self.seed = groups, batch_size, seed
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        idx = list(range(len(self.groups)))
        rng.shuffle(idx)
        batches, open_ = [], {}
        for i in idx:
            g = open_.setdefault(self.groups[i], [])
            g.append(i)
            if len(g) == self.batch_size:
                batches.append(g)
                open_[self.groups[i]] = []
        batches += [g for g in open_.values() if g]
        rng.shuffle(batches)
        # Every rank gets the same number of batches (padding with repeats) so DDP stays in step.
        per = math.ceil(len(batches) / self.world)
        batches = (batches * (1 + per * self.world // max(1, len(batches))))[: per * self.world]
        return batches[self.rank::self.world]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class RunBatches:
    """A run's batches, epoch after epoch from ``first_epoch``, without end: one DataLoader
    iterator serves the whole run, so its worker processes go on into the next epoch instead of
    draining and refilling at each epoch's end (17 nuclei images make 5 batches an epoch)."""

    def __init__(self, sampler: AspectRatioBatches, first_epoch: int):
        self.sampler, self.first_epoch = sampler, first_epoch

    def __iter__(self):
        epoch = self.first_epoch
        while True:
            self.sampler.set_epoch(epoch)
            batches = iter(self.sampler)
            first = next(batches, None)
            if first is None:  # nothing to train on: end rather than spin
                return
            yield first
            yield from batches
            epoch += 1


def seed_worker(worker_id: int) -> None:
    """A DataLoader worker's own augmentation draws (each starts with a copy of the dataset, and
    would repeat the others' flips and colours otherwise); the same seed gives the same run."""
    ds = torch.utils.data.get_worker_info().dataset
    ds.rng = random.Random(ds.seed * 1009 + worker_id + 1)


def data_loader(dataset: LabelledImages, batches: RunBatches, workers: int) -> torch.utils.data.DataLoader:
    """Worker processes forked where the platform can (a forked worker starts at once; a spawned
    one imports torch again, seconds of a 26 s first model); they never touch the GPU."""
    ctx = None
    if workers and sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods():
        ctx = mp.get_context("fork")
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=_collate, num_workers=workers,
                                       worker_init_fn=seed_worker if workers else None,
                                       multiprocessing_context=ctx)


def data_workers(asked: int | None, device: torch.device, world: int) -> int:
    """DataLoader worker processes per training process: ``asked``, else on a GPU one per two
    cores (shared by the ranks), at most 8; on a CPU 0 (the step needs the cores; a thread
    decodes ahead)."""
    if asked is not None:
        return max(0, asked)
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, min(8, cores // (2 * world)))


def _collate(batch):
    return tuple(zip(*batch))


def _pinned(batch):
    """Page-locked copies (on the prefetch thread), so uploads overlap the GPU's work."""
    images, targets = batch
    return (tuple(i.pin_memory() for i in images),
            tuple({k: v.pin_memory() for k, v in t.items()} for t in targets))


def _person_instances(project, rec: ImageRecord) -> list[Instance]:
    return [i for i in project.instances(rec.id) if i.touched_by_person]


def collect_samples(project, records: list[ImageRecord]) -> tuple[list[Sample], list[int]]:
    samples, groups = [], []
    for r in records:
        r = project.ensure_size(r)
        if not r.readable:
            continue
        samples.append(Sample(project.abspath(r), _person_instances(project, r), r.width, r.height))
        groups.append(int(r.width >= r.height))
    return samples, groups


def _coco_samples(project, coco_path: str) -> tuple[list[Sample], list[int]]:
    """Samples from a COCO file's images under the project's folder (validated, not imported)."""
    from .coco import plan_import, read_json

    cats, images, _, _ = plan_import(read_json(coco_path), coco_path, project.root)
    ids = {c.name: c.id for c in project.categories()}
    missing = sorted({n for im in images.values() for n, _ in im.instances if n not in ids})
    if missing:
        raise TrainingError(f"{coco_path}: categories not in the project: {', '.join(missing)}")
    samples, groups = [], []
    for im in images.values():
        samples.append(Sample(project.root / im.path,
                              [i.with_(category_id=ids[n]) for n, i in im.instances], im.width, im.height))
        groups.append(int(im.width >= im.height))
    return samples, groups
