"""Batched inference that returns plain dataclasses with RLE masks at full image resolution.

Unlike torchvision's own post-processing, no ``N x H x W`` float mask is ever built: each 28 x 28
mask is pasted inside its box only and encoded to RLE on a CPU thread while the model runs the
next batch. Image decoding also runs ahead on threads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.models.detection.roi_heads import keypointrcnn_inference, maskrcnn_inference

from . import masks as M
from .boxfill import fill_box, fill_box_both
from .devices import cpu_bf16_fast, device_description, is_out_of_memory, pick_device  # noqa: F401 (re-exported)
from .errors import InferenceError
from .fills import fill_boxes, fill_clicks, model_in_boxes, split_click  # noqa: F401 (fill_* re-exported)
from .domain import MODEL, Category, ImageStatus, Instance, Prediction
from .images import ImageReadError, load_image
from .model import CheckpointError, Detector, build_model, detector_from_checkpoint, load_checkpoint
from .paste import paste_mask, paste_runs  # noqa: F401 (re-exported)
from .threads import run_ahead


def precision(device: torch.device, amp: bool = True) -> str:
    """What a Predictor on ``device`` runs in: float16 autocast on a GPU, bfloat16 on a CPU that has
    it in hardware (``cpu_bf16_fast``), else float32 (``amp=False`` too)."""
    if amp and device.type == "cuda":
        return "float16"
    return "bfloat16" if amp and device.type == "cpu" and cpu_bf16_fast() else "float32"


def describe_device(device: torch.device, amp: bool = True) -> str:
    """The device and the precision a Predictor there runs in, as the status bar says it."""
    return f"{device_description(device)} · {precision(device, amp)}"


class Predictor:
    """Runs a Detector on batches of images; results are Instances with RLE masks."""

    def __init__(self, detector: Detector, device: str | torch.device | None = None,
                 batch_size: int | None = None, amp: bool = True, workers: int | None = None,
                 paste_on_device: bool | None = None, channels_last: bool = False):
        self.detector = detector
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        # Batches pay off on a GPU; on a CPU one image at a time is fastest (measured).
        self.batch_size = max(1, int(batch_size or (4 if self.device.type != "cpu" else 1)))
        self.model = detector.model.to(self.device).eval()
        # float16 on a GPU; bfloat16 on a CPU that has it in hardware (devices.cpu_bf16_fast), with
        # the layers that give box coordinates and scores in float32 as in training (model.in_float32).
        self.precision = precision(self.device, amp)
        self.amp = self.precision != "float32"
        on_gpu = self.device.type == "cuda"
        # On a GPU: masks are pasted on the device (paste_runs), images are uploaded from pinned
        # memory, and convolutions run channels-last where asked (bench/bench_predict.py
        # --channels-last measures it). cuDNN autotuning stays off: the mask head sees a new
        # batch size (the number of detections) on nearly every call, and each new shape re-tunes.
        self.paste_on_device = on_gpu if paste_on_device is None else paste_on_device
        self.pin = on_gpu
        self.channels_last = bool(channels_last) and on_gpu
        if self.channels_last:
            self.model.backbone.to(memory_format=torch.channels_last)
        self.workers = workers or (max(2, min(8, (os.cpu_count() or 2) // 2)) if on_gpu else 2)
        self._slices = detector.keypoint_slices()
        self.category_ids: dict[int, int] = {i + 1: (c.id if c.id is not None else i + 1)
                                             for i, c in enumerate(detector.categories)}
        # Whether the model's mask is one of a drawn box's fill candidates (``detector.boxfill``);
        # a model whose held-out images were filled better without it turns this off
        # (``evaluation.fill_choice``, ``versions.fill_uses_model``).
        self.model_masks = True

    def autocast(self):
        """The precision the model runs in: float16 autocast on a GPU, bfloat16 on a CPU with it in
        hardware (``amp``), else float32."""
        if not self.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.precision))

    def describe(self) -> str:
        """The device and the precision the model runs in, for people: "CPU · bfloat16"."""
        return describe_device(self.device, self.amp)

    # -- the model pass, without full-image pasting -----------------------------------------
    def upload(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``H x W x 3`` uint8 (pinned when it came from ``stage``) -> ``3 x H x W`` float on the device."""
        t = torch.from_numpy(a) if isinstance(a, np.ndarray) else a
        return t.to(self.device, non_blocking=True).permute(2, 0, 1).float().div_(255)

    def stage(self, a: np.ndarray) -> np.ndarray | torch.Tensor:
        """Runs on a loader thread: page-lock the pixels so the upload overlaps the GPU's work."""
        return torch.from_numpy(a).pin_memory() if self.pin else a

    @torch.inference_mode()
    def forward(self, arrays: list[np.ndarray | torch.Tensor]) -> list[dict[str, Any]]:
        """Boxes/keypoints in original pixels; per mask either 28x28 probabilities (``masks``) or,
        when pasted on the device, its run boundaries (``runs``); all on the CPU."""
        model = self.model
        tensors = [self.upload(a) for a in arrays]
        sizes = [t.shape[-2:] for t in tensors]
        ctx = self.autocast()
        with ctx:
            images, _ = model.transform(tensors)
            x = images.tensors
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            features = model.backbone(x)
            proposals, _ = model.rpn(images, features)
            dets = self._heads(features, proposals, images.image_sizes)
        out = []
        for d, (oh, ow), (rh, rw) in zip(dets, sizes, images.image_sizes):
            sx, sy = ow / rw, oh / rh
            boxes = d["boxes"].float() * torch.tensor([sx, sy, sx, sy], device=self.device)
            r = {"boxes": boxes.cpu(), "labels": d["labels"].cpu(), "scores": d["scores"].float().cpu()}
            if self.paste_on_device:
                r["runs"] = paste_runs(d["masks"][:, 0], boxes, int(oh), int(ow))
            else:
                r["masks"] = d["masks"][:, 0].float().cpu()
            if "keypoints" in d:
                kp = d["keypoints"].float().clone()
                kp[..., 0] *= sx
                kp[..., 1] *= sy
                r["keypoints"] = kp.cpu()
                r["keypoints_scores"] = d["keypoints_scores"].float().cpu()
            out.append(r)
        return out

    def _heads(self, features, proposals, image_sizes) -> list[dict[str, torch.Tensor]]:
        """torchvision's RoIHeads at inference, except that the keypoint head runs only on
        detections of categories that have keypoints (torchvision runs it on every detection)."""
        rh = self.model.roi_heads
        feats = rh.box_head(rh.box_roi_pool(features, proposals, image_sizes))
        class_logits, box_regression = rh.box_predictor(feats)
        boxes, scores, labels = rh.postprocess_detections(class_logits, box_regression, proposals,
                                                          image_sizes)
        dets = [{"boxes": b, "labels": lab, "scores": sc} for b, sc, lab in zip(boxes, scores, labels)]
        if rh.has_mask():
            if sum(len(b) for b in boxes):
                mf = rh.mask_head(rh.mask_roi_pool(features, boxes, image_sizes))
                probs = maskrcnn_inference(rh.mask_predictor(mf), labels)
            else:
                probs = [b.new_zeros((0, 1, 28, 28)) for b in boxes]
            for d, p in zip(dets, probs):
                d["masks"] = p
        if rh.has_keypoint():
            k = rh.keypoint_predictor.kps_score_lowres.out_channels
            wanted = torch.tensor(sorted(self._slices), device=boxes[0].device)
            sel = [torch.isin(lab, wanted) for lab in labels]
            kboxes = [b[s] for b, s in zip(boxes, sel)]
            kps = [b.new_zeros((len(b), k, 3)) for b in boxes]
            kscores = [b.new_zeros((len(b), k)) for b in boxes]
            if sum(len(b) for b in kboxes):
                kf = rh.keypoint_head(rh.keypoint_roi_pool(features, kboxes, image_sizes))
                kp, ks = keypointrcnn_inference(rh.keypoint_predictor(kf), kboxes)
                for i, s in enumerate(sel):
                    kps[i][s] = kp[i].to(kps[i].dtype)
                    kscores[i][s] = ks[i].to(kscores[i].dtype)
            for d, kp_, ks_ in zip(dets, kps, kscores):
                d["keypoints"], d["keypoints_scores"] = kp_, ks_
        return dets

    def to_instances(self, raw: dict[str, torch.Tensor], height: int, width: int) -> tuple[Instance, ...]:
        """Paste and encode one image's detections (runs on a CPU thread)."""
        out = []
        boxes = raw["boxes"].numpy()
        for i in range(len(boxes)):
            label = int(raw["labels"][i])
            box = boxes[i].clip([0, 0, 0, 0], [width, height, width, height])
            if "runs" in raw:
                rle = M.from_transitions(raw["runs"][i], height, width)
            else:
                crop, x0, y0 = paste_mask(raw["masks"][i], boxes[i], height, width)
                rle = M.encode_crop(crop, x0, y0, height, width)
            kps: tuple = ()
            sl = self._slices.get(label)
            if sl is not None and "keypoints" in raw:
                pts = raw["keypoints"][i, sl].numpy()
                kps = tuple((round(float(x), 2), round(float(y), 2), 2) for x, y, _ in pts)
            out.append(Instance(
                category_id=self.category_ids.get(label, label),
                box=tuple(round(float(v), 2) for v in box), mask=rle, keypoints=kps,
                score=round(float(raw["scores"][i]), 4), source=MODEL, changed_by=MODEL))
        return tuple(out)

    def predict(self, arrays: list[np.ndarray]) -> list[tuple[Instance, ...]]:
        """Predict a list of RGB arrays (batched)."""
        results = []
        for i in range(0, len(arrays), self.batch_size):
            batch = arrays[i:i + self.batch_size]
            for raw, a in zip(self.forward(batch), batch):
                results.append(self.to_instances(raw, a.shape[0], a.shape[1]))
        return results

    def predict_items(self, items: Iterable[tuple[Any, str | Path]], *, request_id: int = 0,
                      cancel: threading.Event | None = None) -> Iterator[Prediction]:
        """Predict (key, path) pairs in order; decoding, the model and encoding overlap.

        The model runs on a thread of its own, a few batches ahead of the caller, so whatever
        the caller does with each answer (storing it, drawing it) overlaps the next batches
        instead of leaving the GPU idle. Decoding runs ahead on the pool; each image's masks are
        encoded there too. An unreadable image yields a Prediction with ``error`` set. Stops
        between batches when ``cancel`` is set, or when the caller stops iterating.
        """
        items = list(items)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="loupe-io") as pool:
            def load(path):
                try:
                    return self.stage(load_image(path)), None
                except ImageReadError as exc:
                    return None, str(exc)

            def answers():  # runs on its own thread (run_ahead), a few batches ahead of the caller
                loads: list[Future | None] = [pool.submit(load, p) for _, p in items[: 3 * self.batch_size]]
                submitted = len(loads)
                for start in range(0, len(items), self.batch_size):
                    if cancel is not None and cancel.is_set():
                        return
                    arrays, keys = [], []
                    for k, (key, path) in enumerate(items[start:start + self.batch_size]):
                        arr, err = loads[start + k].result()
                        loads[start + k] = None  # free the pixels
                        if submitted < len(items):  # keep decoding ahead of the model
                            loads.append(pool.submit(load, items[submitted][1]))
                            submitted += 1
                        if arr is None:
                            yield key, str(path), None, 0, 0, err
                        else:
                            arrays.append(arr)
                            keys.append((key, str(path)))
                    if arrays:
                        for raw, a, (key, path) in zip(self.forward(arrays), arrays, keys):
                            h, w = int(a.shape[0]), int(a.shape[1])
                            yield key, path, pool.submit(self.to_instances, raw, h, w), w, h, None

            for item in run_ahead(answers(), depth=3 * self.batch_size, name="loupe-model",
                                  join_timeout=None):
                yield self._done(item, request_id)

    @staticmethod
    def _done(p, request_id: int) -> Prediction:
        key, path, fut, w, h, err = p
        if fut is None:
            return Prediction(request_id, key, path, 0, 0, (), error=err)
        return Prediction(request_id, key, path, w, h, fut.result())

    # -- the box as the region: the model's second stage fills in mask and keypoints --------
    def predict_in_boxes(self, array: np.ndarray, boxes: list[tuple[float, float, float, float]],
                         labels: list[int], model_masks: bool | None = None) -> tuple[Instance, ...]:
        """Mask (and keypoints) for given boxes and labels (1-based model labels): the model's mask,
        or a classical cut where that fits the drawn box better (``detector.boxfill``); the cuts
        alone where ``model_masks`` (default ``self.model_masks``) is off, keypoints still the model's."""
        use_model = self.model_masks if model_masks is None else model_masks
        return tuple(i.with_(mask=fill_box(array, i.box, i.mask if use_model else None)[0])
                     for i in self.model_in_boxes(array, boxes, labels))

    @torch.inference_mode()
    def model_in_boxes(self, array: np.ndarray, boxes: list[tuple[float, float, float, float]],
                       labels: list[int]) -> tuple[Instance, ...]:
        """The model's own mask and keypoints for given boxes and labels (no classical cut)."""
        model, rh = self.model, self.model.roi_heads
        t = torch.from_numpy(array).to(self.device).permute(2, 0, 1).float().div_(255)
        oh, ow = t.shape[-2:]
        ctx = self.autocast()
        with ctx:
            images, _ = model.transform([t])
            rh_, rw_ = images.image_sizes[0]
            sx, sy = ow / rw_, oh / rh_
            b = torch.tensor(boxes, dtype=torch.float32, device=self.device).reshape(-1, 4)
            b_r = b / torch.tensor([sx, sy, sx, sy], device=self.device)
            lab = torch.tensor(labels, dtype=torch.int64, device=self.device)
            features = model.backbone(images.tensors)
            mf = rh.mask_head(rh.mask_roi_pool(features, [b_r], images.image_sizes))
            probs = maskrcnn_inference(rh.mask_predictor(mf), [lab])[0]
            raw = {"boxes": b.cpu(), "labels": lab.cpu(), "masks": probs[:, 0].float().cpu(),
                   "scores": torch.ones(len(b))}
            if rh.has_keypoint():
                kf = rh.keypoint_head(rh.keypoint_roi_pool(features, [b_r], images.image_sizes))
                kp, _ = keypointrcnn_inference(rh.keypoint_predictor(kf), [b_r])
                kp = kp[0].float().clone()
                kp[..., 0] *= sx
                kp[..., 1] *= sy
                raw["keypoints"] = kp.cpu()
        return tuple(i.with_(score=None) for i in self.to_instances(raw, oh, ow))


def truth_fill(predictor: Predictor | None, array: np.ndarray, truth: list[Instance],
               model_masks: bool | None = None):
    """The Box tool's fill of each of ``truth``'s boxes, in the form the simulated annotator
    asks for it (``detector.annotator.Fill``); None for an image without objects."""
    if not truth:
        return None
    return _by_box(truth, fill_boxes(predictor, array, [g.box for g in truth], [g.category_id for g in truth],
                                     model_masks))


def truth_fills(predictor: Predictor, array: np.ndarray, truth: list[Instance]):
    """``truth_fill`` with the model's masks among the candidates and without them, from one pass
    of the model's second stage and one set of classical cuts (``evaluation.fill_choice``)."""
    if not truth:
        return None, None
    raw = model_in_boxes(predictor, array, [g.box for g in truth], [g.category_id for g in truth])
    pairs = [fill_box_both(array, r.box, r.mask) for r in raw]
    return (_by_box(truth, [r.with_(mask=a) for r, (a, _) in zip(raw, pairs)]),
            _by_box(truth, [r.with_(mask=b) for r, (_, b) in zip(raw, pairs)]))


def truth_click(predictor: Predictor | None, array: np.ndarray):
    """The Click tool on ``array`` in the form the simulated annotator asks for it
    (``detector.annotator.Click``, with its ``split`` for a click inside an instance), each click
    worked out once."""
    done: dict = {}

    def click(xy, category_id):
        key = (tuple(xy), category_id)
        if key not in done:
            done[key] = fill_clicks(predictor, array, [xy], [category_id])[0]
        return done[key]

    def split(inside: Instance, xy, category_id):
        key = ("split", inside.mask["counts"] if inside.mask else None, tuple(xy), category_id)
        if key not in done:
            done[key] = split_click(predictor, array, inside, xy, category_id)
        return done[key]
    click.split = split
    return click


def _by_box(truth: list[Instance], filled):
    by_box = {tuple(g.box): f for g, f in zip(truth, filled)}
    return lambda box, category_id: by_box.get(tuple(box))


# ------------------------------------------------------------------------------------------
# Loading a detector for a project, and pre-annotating a whole project
# ------------------------------------------------------------------------------------------
def load_detector(project, weights: str | None = None) -> Detector:
    """The detector named by ``weights`` (checkpoint path, 'coco', or None/'active')."""
    if weights in (None, "active"):
        active = project.active_model()
        if active is None:
            raise InferenceError("no model yet: review a few images and train one "
                                 "(loupe train), or pass --weights CHECKPOINT or --weights coco")
        weights = active.path
    if weights == "coco":
        cats = project.categories()
        if not cats:
            raise InferenceError("the project has no categories yet; import or add some first")
        det = build_model(categories=cats, weights="coco")
        if "random" in det.notice.lower():
            raise InferenceError(det.notice.split(":")[0] + ": pre-annotating with random "
                                 "weights would only add noise; train first")
        return det
    try:
        ckpt = load_checkpoint(weights)
        det = detector_from_checkpoint(ckpt, source=str(weights))
    except CheckpointError as exc:
        raise InferenceError(str(exc)) from exc
    return attach_project_categories(project, det)


def attach_project_categories(project, det: Detector) -> Detector:
    """Give the detector's categories the project's ids, adding any the project lacks."""
    existing = {c.name: c for c in project.categories()}
    mapped = det.meta.get("category_map") or {}  # a COCO start: COCO class -> project category
    cats = []
    for c in det.categories:
        target = mapped.get(c.name, c.name)
        pc = existing.get(target) or project.ensure_category(Category(target, c.color, c.keypoints, c.skeleton))
        cats.append(Category(c.name, pc.color, c.keypoints, c.skeleton, pc.id))
    det.categories = tuple(cats)
    return det


def store_predictions(project, predictions: Iterable[Prediction], identity: str) -> Iterator[Prediction]:
    """Store each answer as it comes (never over a person's edits; an unreadable image is marked
    so) and yield it with the instances as stored (ids and all). The one store loop of both
    ``loupe predict`` and the app's worker."""
    for pred in predictions:
        if pred.error:
            project.mark_unreadable(pred.image_id, pred.error.split(": ", 1)[-1])
        else:
            project.set_size(pred.image_id, pred.width, pred.height)
            stored = project.replace_predictions(pred.image_id, pred.instances, identity)
            pred = Prediction(pred.request_id, pred.image_id, pred.path, pred.width, pred.height, tuple(stored))
        yield pred


def predict_project(project, weights: str | None = None, device: str | None = None,
                    batch_size: int | None = None, progress: bool = False,
                    shard: tuple[int, int] | None = None, cancel: threading.Event | None = None,
                    on_prediction: Callable[[Prediction], None] | None = None,
                    channels_last: bool = False, again: bool = False) -> dict:
    """Pre-annotate every readable image not yet reviewed; never over a person's edits.

    Images this same model already predicted are skipped (an interrupted run resumes where it
    stopped) unless ``again``."""
    det = load_detector(project, weights)
    identity = model_identity(project, weights)
    try:
        predictor = Predictor(det, device, batch_size, channels_last=channels_last)
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            raise InferenceError(f"out of memory on {device or 'the GPU'} while loading the model: "
                                 "close other programs using the GPU, or use --device cpu") from exc
        raise
    todo = [r for r in project.images([ImageStatus.NEW, ImageStatus.PREDICTED, ImageStatus.IN_REVIEW])]
    if shard is not None:  # shares first: what another rank stores meanwhile cannot move them
        rank, world = shard
        todo = todo[rank::world]
    done_before = 0
    if not again:
        fresh = [r for r in todo if r.predicted_by != identity]
        done_before, todo = len(todo) - len(fresh), fresh
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="img", desc="pre-annotating")
    n_inst = n_img = n_bad = 0
    t0 = time.perf_counter()
    try:
        items = [(r.id, project.abspath(r)) for r in todo]
        for pred in store_predictions(project, predictor.predict_items(items, cancel=cancel), identity):
            if pred.error:
                n_bad += 1
                if bar is not None:
                    bar.write(f"skipped {pred.error}")
            else:
                n_inst += len(pred.instances)
                n_img += 1
            if on_prediction is not None:
                on_prediction(pred)
            if bar is not None:
                bar.update(1)
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            raise InferenceError(f"out of memory on {predictor.device}: lower --batch-size "
                                 f"(now {batch_size}) or use a smaller model input size") from exc
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    return {"images": n_img, "instances": n_inst, "unreadable": n_bad,
            "already_done": done_before, "images_per_s": round(n_img / max(seconds, 1e-9), 2),
            "device": predictor.describe(),
            "seconds": round(seconds, 2), "notice": det.notice}


def model_identity(project, weights: str | None) -> str:
    """Names the model's weights: the checkpoint file (path, size, time) or 'coco'."""
    if weights in (None, "active"):
        active = project.active_model()
        weights = active.path if active is not None else str(weights)
    if weights == "coco":
        return "coco"
    try:
        st = os.stat(weights)
    except OSError:
        return str(weights)
    return f"{Path(weights).resolve()}|{st.st_size}|{st.st_mtime_ns}"
