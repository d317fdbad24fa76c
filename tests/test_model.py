"""Model building, starting weights and checkpoints (CPU, light backbone)."""

import hashlib
import os
import random
import pickle

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.domain import Category
from detector.model import (CheckpointError, ModelConfig, _architecture, build_model,
                            coco_cache_path, detector_from_checkpoint, load_checkpoint,
                            save_checkpoint)
from detector.synthetic import CATEGORIES

LIGHT = ModelConfig(backbone="resnet18", min_size=96, max_size=128,
                    anchor_sizes=(8, 16, 32, 64, 128), box_detections_per_img=20)


def test_random_init_trains_from_scratch_and_has_all_heads():
    det = build_model(categories=CATEGORIES, weights="none", config=LIGHT)
    m = det.model
    assert not any(isinstance(x, FrozenBatchNorm2d) for x in m.modules())
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.backbone.modules())
    assert all(p.requires_grad for p in m.backbone.body.parameters())
    rh = m.roi_heads
    assert rh.has_mask() and rh.has_keypoint()
    assert rh.box_predictor.cls_score.out_features == len(CATEGORIES) + 1
    assert rh.keypoint_predictor.kps_score_lowres.out_channels == 4
    assert m.rpn.head.cls_logits.out_channels == 3  # K = 3 anchors per location
    assert m.rpn.proposal_matcher.high_threshold == 0.7 and m.rpn.proposal_matcher.low_threshold == 0.3
    no_kp = build_model(categories=CATEGORIES[:2], weights="none", config=LIGHT)
    assert not no_kp.model.roi_heads.has_keypoint()


def test_knobs_reach_the_model():
    cfg = ModelConfig(backbone="resnet18", aspect_ratios=(0.5, 1.0, 2.0, 4.0), rpn_pre_nms_top_n_test=300,
                      rpn_post_nms_top_n_test=150, box_score_thresh=0.3, box_nms_thresh=0.4,
                      box_detections_per_img=17)
    m = build_model(categories=CATEGORIES[:1], weights="none", config=cfg).model
    assert m.rpn.head.cls_logits.out_channels == 4
    m.eval()
    assert m.rpn.pre_nms_top_n() == 300 and m.rpn.post_nms_top_n() == 150
    assert (m.roi_heads.score_thresh, m.roi_heads.nms_thresh, m.roi_heads.detections_per_img) == (0.3, 0.4, 17)


def _outputs(det, seed=0):
    torch.manual_seed(seed)
    x = torch.rand(3, 96, 128)
    det.model.eval()
    with torch.no_grad():
        return det.model([x])[0]


def test_checkpoint_round_trip(tmp_path):
    det = build_model(categories=CATEGORIES, weights="none", config=LIGHT)
    path = save_checkpoint(tmp_path / "m.pt", det, step=7)
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 7 and ckpt["config"]["backbone"] == "resnet18"
    assert [c["name"] for c in ckpt["categories"]] == [c.name for c in CATEGORIES]
    assert ckpt["categories"][3]["skeleton"] == [[1, 2], [2, 4], [4, 3], [3, 1]]
    assert "torch" in ckpt["versions"]
    again = detector_from_checkpoint(ckpt)
    a, b = _outputs(det), _outputs(again)
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_category_change_keeps_matching_rows(tmp_path):
    det = build_model(categories=CATEGORIES, weights="none", config=LIGHT)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "m.pt", det))
    new = (Category("triangle"), Category("blob"), Category("kite", keypoints=("top", "left", "right", "bottom")))
    d2 = detector_from_checkpoint(ckpt, new)
    w_old = det.model.roi_heads.box_predictor.cls_score.weight
    w_new = d2.model.roi_heads.box_predictor.cls_score.weight
    assert torch.equal(w_new[1], w_old[3]) and torch.equal(w_new[3], w_old[4])  # by name
    assert not torch.equal(w_new[2], w_old[2])  # 'blob' is new
    k_old = det.model.roi_heads.keypoint_predictor.kps_score_lowres.weight
    assert torch.equal(d2.model.roi_heads.keypoint_predictor.kps_score_lowres.weight, k_old)
    assert torch.equal(d2.model.backbone.body.conv1.weight, det.model.backbone.body.conv1.weight)
    with pytest.raises(CheckpointError, match="categories"):
        detector_from_checkpoint(ckpt, new, strict_categories=True)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARK']}",))


def test_bad_checkpoints_are_refused(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    evil = tmp_path / "evil.pt"
    torch.save({"format": "loupe-checkpoint", "model": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not mark.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not mark.exists()

    for seed in range(40):  # random bytes reach many different unpickler errors; each is refused
        (tmp_path / "junk.pt").write_bytes(random.Random(seed).randbytes(2000))
        with pytest.raises(CheckpointError, match="junk.pt"):
            load_checkpoint(tmp_path / "junk.pt")
    good = save_checkpoint(tmp_path / "good.pt", build_model(categories=CATEGORIES[:1], weights="none",
                                                             config=LIGHT))
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a Loupe checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    ckpt = load_checkpoint(good)
    ckpt["config"]["backbone"] = "resnet50_v2"  # weights of one architecture, label of another
    with pytest.raises(CheckpointError, match="do not fit"):
        detector_from_checkpoint(ckpt)


def test_coco_weights_from_the_cache_the_test_fills(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # and no downloads (conftest)
    cats = (Category("person"), Category("circle"), Category("dog"))
    # Without a cache (and no network here) we fall back to random weights, and say so.
    det = build_model(categories=cats, weights="coco", config=ModelConfig(min_size=96, max_size=128))
    assert "No pretrained weights found" in det.notice
    # Fill torchvision's cache with a (random) COCO-shaped state dict, where torchvision looks.
    torch.manual_seed(1)
    coco = _architecture(91, 0, ModelConfig())
    sd = coco.state_dict()
    path = coco_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    # its SHA-256 does not start with the digits torchvision's file name carries: refused
    det = build_model(categories=cats, weights="coco", config=ModelConfig(min_size=96, max_size=128))
    assert "No pretrained weights found" in det.notice
    from detector import pretrained

    monkeypatch.setitem(pretrained.KNOWN_HASHES, path.name, hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    det = build_model(categories=cats, weights="coco", config=ModelConfig(min_size=96, max_size=128))
    assert "COCO" in det.notice and "person" in det.notice and "dog" in det.notice
    got = det.model.state_dict()
    assert torch.equal(got["backbone.body.layer1.0.conv1.weight"], sd["backbone.body.layer1.0.conv1.weight"])
    cls = got["roi_heads.box_predictor.cls_score.weight"]
    src = sd["roi_heads.box_predictor.cls_score.weight"]
    assert torch.equal(cls[0], src[0]) and torch.equal(cls[1], src[1]) and torch.equal(cls[3], src[18])
    assert not torch.equal(cls[2], src[2])  # 'circle' is not a COCO class
    bb = got["roi_heads.box_predictor.bbox_pred.weight"]
    assert torch.equal(bb[12:16], sd["roi_heads.box_predictor.bbox_pred.weight"][72:76])
    mk = got["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert torch.equal(mk[3], sd["roi_heads.mask_predictor.mask_fcn_logits.weight"][18])


def test_optimizer_and_learning_rate_defaults_depend_on_the_start(tmp_path):
    from detector.training import TrainConfig, TrainingError, with_start_defaults

    scratch = build_model(categories=CATEGORIES, weights="none", config=LIGHT)
    assert scratch.meta["from_scratch"] is True
    # Random weights: AdamW at 1e-3 for batch 4, sqrt-scaled with the batch.
    c = with_start_defaults(TrainConfig(weights="none", batch_size=4), scratch)
    assert (c.optimizer, c.lr) == ("adamw", pytest.approx(1e-3))
    assert c.keypoint_loss_weight == 0.25  # AdamW runs: the keypoint loss at a quarter ...
    assert c.loss_weights() == {"loss_keypoint": 0.25, "loss_classifier": 2.0}  # ... the classifier's doubled
    assert c.label_smoothing == 0.0  # ... its targets not smoothed (measured, left off)
    assert with_start_defaults(TrainConfig(weights="none", batch_size=16), scratch).lr == pytest.approx(2e-3)
    # Asking for SGD from random weights: the from-scratch SGD rate, torchvision's loss weights.
    c = with_start_defaults(TrainConfig(weights="none", batch_size=4, optimizer="sgd"), scratch)
    assert (c.optimizer, c.lr, c.keypoint_loss_weight) == ("sgd", pytest.approx(0.02), 1.0)
    assert (c.classifier_loss_weight, c.label_smoothing) == (1.0, 0.0)
    # A user's rate and weights are kept.
    assert with_start_defaults(TrainConfig(weights="none", lr=0.001), scratch).lr == 0.001
    assert with_start_defaults(TrainConfig(weights="none", keypoint_loss_weight=2.0), scratch).keypoint_loss_weight == 2
    c = with_start_defaults(TrainConfig(weights="none", classifier_loss_weight=0.5), scratch)
    assert c.loss_weights() == {"loss_keypoint": 0.25, "loss_classifier": 0.5}
    assert with_start_defaults(TrainConfig(weights="none", label_smoothing=0.1), scratch).label_smoothing == 0.1
    # Learned weights of unknown origin (COCO, an older checkpoint): torchvision's reference SGD
    # recipe (0.01 for batch 8); AdamW at its fine-tuning rate.
    ckpt = save_checkpoint(tmp_path / "m.pt", scratch)
    loaded = build_model(categories=CATEGORIES, weights=str(ckpt), config=LIGHT)
    c = with_start_defaults(TrainConfig(weights=str(ckpt), batch_size=4), loaded)
    assert (c.optimizer, c.lr, c.keypoint_loss_weight) == ("sgd", pytest.approx(0.005), 1.0)
    c = with_start_defaults(TrainConfig(weights=str(ckpt), optimizer="adamw"), loaded)
    assert (c.optimizer, c.lr, c.keypoint_loss_weight) == ("adamw", pytest.approx(1e-4), 0.25)
    # A model trained here from random weights goes on the way it started, round after round.
    ckpt = save_checkpoint(tmp_path / "r1.pt", scratch, from_random_init=True)
    loaded = build_model(categories=CATEGORIES, weights=str(ckpt), config=LIGHT)
    c = with_start_defaults(TrainConfig(weights=str(ckpt), batch_size=4), loaded)
    assert (c.optimizer, c.lr) == ("adamw", pytest.approx(1e-3))
    # Resuming keeps the run's optimizer; asking for another one is refused with a reason.
    saved = {"train_config": {"optimizer": "adamw", "lr": 7e-4}}
    c = with_start_defaults(TrainConfig(weights="none", resume="run.pt"), scratch, saved)
    assert (c.optimizer, c.lr, c.keypoint_loss_weight) == ("adamw", 7e-4, 1.0)  # a run from before the weight
    assert (c.classifier_loss_weight, c.label_smoothing) == (1.0, 0.0)  # ... and from before these
    saved["train_config"].update(keypoint_loss_weight=0.25, classifier_loss_weight=2.0, label_smoothing=0.1)
    c = with_start_defaults(TrainConfig(weights="none", resume="run.pt"), scratch, saved)
    assert c.loss_weights() == {"loss_keypoint": 0.25, "loss_classifier": 2.0}
    assert c.label_smoothing == 0.1
    with pytest.raises(TrainingError, match="run.pt: that run used adamw"):
        with_start_defaults(TrainConfig(weights="none", resume="run.pt", optimizer="sgd"), scratch, saved)
    with pytest.raises(TrainingError, match="unknown optimizer 'adam'"):
        with_start_defaults(TrainConfig(weights="none", optimizer="adam"), scratch)


def _shapes_batch(tmp_path, n: int, seed: int):
    """(images, targets, categories) of ``n`` small synthetic scenes, as training sees them (no
    augmentation)."""
    from detector.coco import import_coco
    from detector.store import Project
    from detector.synthetic import generate
    from detector.training import LabelledImages, collect_samples

    gt = generate(tmp_path / "f", n_images=n, seed=seed, size=(128, 96))
    with Project(tmp_path / "f") as p:
        p.scan()
        import_coco(p, gt)
        samples, _ = collect_samples(p, p.images())
        cats = tuple(p.categories())
    images, targets = zip(*[LabelledImages(samples, cats, False, 0)[i] for i in range(n)])
    return list(images), list(targets), cats


def test_keypoint_head_trains_on_keypoint_categories_only_with_the_same_loss(tmp_path):
    """The focused keypoint branch: same losses as torchvision's, fewer regions through the head."""
    from detector.model import prepare_roi_heads

    images, targets, cats = _shapes_batch(tmp_path, n=4, seed=1)
    torch.manual_seed(0)
    model = build_model(categories=cats, weights="none", config=LIGHT).model.train()
    seen = []
    model.roi_heads.keypoint_head.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    torch.manual_seed(5)
    ref = model(list(images), list(targets))
    prepare_roi_heads(model, cats)
    torch.manual_seed(5)
    ours = model(list(images), list(targets))
    for k in ref:
        assert torch.allclose(ours[k], ref[k]), k
    assert float(ref["loss_keypoint"]) > 0
    assert seen[1] < seen[0]  # only kites' regions went through the head
    ours["loss_keypoint"].backward()  # and it trains
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("keypoints", [True, False])
def test_label_smoothing_changes_the_classifier_loss_only_and_by_its_definition(tmp_path, keypoints):
    """--label-smoothing E: the region classifier's loss becomes cross-entropy against targets
    smoothed by E, i.e. (1 - E) * torchvision's loss + E * the mean of -log p over the classes;
    every other loss, and inference, stay torchvision's. With and without a keypoint head."""
    from dataclasses import replace

    import torch.nn.functional as F

    from detector.model import prepare_roi_heads

    images, targets, cats = _shapes_batch(tmp_path, n=2, seed=3)
    if not keypoints:
        cats = tuple(replace(c, keypoints=(), skeleton=()) for c in cats)
    torch.manual_seed(0)
    model = build_model(categories=cats, weights="none", config=LIGHT).model.train()
    assert model.roi_heads.has_keypoint() == keypoints
    logits = []
    model.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: logits.append(o[0].detach().float()))

    def losses(eps):
        if eps is not None:
            prepare_roi_heads(model, cats, eps)
        torch.manual_seed(5)
        return {k: float(v) for k, v in model(list(images), list(targets)).items()}

    ref = losses(None)  # torchvision's own heads
    assert losses(0.0) == pytest.approx(ref, rel=1e-5)
    eps = 0.3
    ours = losses(eps)
    spread = float((-F.log_softmax(logits[-1], dim=1)).mean())
    assert ours["loss_classifier"] == pytest.approx((1 - eps) * ref["loss_classifier"] + eps * spread, rel=1e-4)
    assert ours["loss_classifier"] != pytest.approx(ref["loss_classifier"], rel=1e-3)
    assert {k: v for k, v in ours.items() if k != "loss_classifier"} == pytest.approx(
        {k: v for k, v in ref.items() if k != "loss_classifier"}, rel=1e-5)
    model.eval()
    with torch.no_grad():
        out = model([images[0]])[0]
    assert set(out) >= {"boxes", "labels", "scores", "masks"}


def test_learned_weights_train_three_stages_with_backbone_batchnorm_kept(tmp_path):
    """bench_transfer.py's finding as the default: from learned weights (a checkpoint, COCO's) the
    stem and first stage stay and backbone BatchNorm keeps its statistics; random weights train
    everything; an explicit choice, and a resumed run's, win."""
    from detector.store import Project
    from detector.training import TrainConfig, prepare_detector, with_start_defaults

    scratch = build_model(categories=CATEGORIES, weights="none", config=LIGHT)
    assert scratch.config.trainable_layers == 5
    assert with_start_defaults(TrainConfig(weights="none"), scratch).freeze_bn is False
    ckpt = save_checkpoint(tmp_path / "m.pt", scratch, from_random_init=True)
    with Project(tmp_path) as p:
        for c in CATEGORIES:
            p.add_category(c)
        det, _ = prepare_detector(p, TrainConfig(weights=str(ckpt), backbone="resnet18"))
        assert det.config.trainable_layers == 3
        frozen = [n for n, t in det.model.backbone.body.named_parameters() if not t.requires_grad]
        assert any(n.startswith("layer1.") for n in frozen) and not any(n.startswith("layer2.") for n in frozen)
        assert with_start_defaults(TrainConfig(weights=str(ckpt)), det).freeze_bn is True
        det, _ = prepare_detector(p, TrainConfig(weights=str(ckpt), trainable_layers=5))
        assert det.config.trainable_layers == 5
    assert with_start_defaults(TrainConfig(weights=str(ckpt), freeze_bn=False), det).freeze_bn is False
    saved = {"train_config": {"optimizer": "adamw", "lr": 7e-4, "freeze_bn": False}}
    assert with_start_defaults(TrainConfig(weights="none", resume="run.pt"), scratch, saved).freeze_bn is False


def test_anchors_stay_float32_under_bfloat16_autocast():
    """torchvision makes anchors in the features' dtype: in bfloat16 an 800 px input's corners are
    rounded to several pixels. Ours are the float32 anchors exactly, whatever the features."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    gen = build_model(categories=CATEGORIES, weights="none", config=LIGHT).model.rpn.anchor_generator
    plain = AnchorGenerator(gen.sizes, gen.aspect_ratios)
    images = ImageList(torch.zeros(2, 3, 800, 1216), [(800, 1216), (800, 1100)])
    maps = [torch.zeros(2, 8, 800 // s, 1216 // s, dtype=torch.bfloat16) for s in (4, 8, 16, 32, 64)]
    exact = plain(images, [m.float() for m in maps])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = gen(images, maps)
    theirs = plain(images, maps)
    assert len(ours) == 2 and all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(ours, exact))
    assert float((theirs[0].float() - exact[0]).abs().max()) >= 2.0  # torchvision's own, in bfloat16


def test_a_coarse_rpn_trains_from_strides_8_to_64_and_survives_a_checkpoint(tmp_path):
    """rpn_stride4=False: the RPN's anchors come from strides 8-64 only (its head and weights as
    before), while the RoI heads still pool from stride 4; it trains, and a checkpoint rebuilds it."""
    from dataclasses import replace

    from detector.heads import CoarseRPN

    images, targets, cats = _shapes_batch(tmp_path, n=2, seed=1)
    det = build_model(categories=cats, weights="none", config=replace(LIGHT, rpn_stride4=False))
    m = det.model.train()
    base = build_model(categories=cats, weights="none", config=LIGHT).model.state_dict()
    assert set(m.state_dict()) == set(base) and isinstance(m.rpn, CoarseRPN)  # the same weights
    seen = {}
    m.rpn.anchor_generator.register_forward_hook(lambda mod, i, o: seen.update(batch=i[0], maps=i[1], anchors=o))
    pooled = []
    m.roi_heads.box_roi_pool.register_forward_hook(lambda mod, i, o: pooled.append(set(i[0])))
    losses = m(list(images), list(targets))
    width = seen["batch"].tensors.shape[-1]
    assert [round(width / f.shape[-1]) for f in seen["maps"]] == [8, 16, 32, 64]
    assert len(seen["anchors"][0]) == 3 * sum(f.shape[-2] * f.shape[-1] for f in seen["maps"])
    assert "0" in pooled[0]  # the heads still see stride 4
    sum(losses.values()).backward()
    assert m.backbone.fpn.inner_blocks[0][0].weight.grad.abs().sum() > 0  # P2 learns through the heads
    assert m.rpn.head.conv[0][0].weight.grad.abs().sum() > 0
    again = detector_from_checkpoint(load_checkpoint(save_checkpoint(tmp_path / "m.pt", det)))
    assert isinstance(again.model.rpn, CoarseRPN) and not again.config.rpn_stride4
    a, b = _outputs(det), _outputs(again)
    assert torch.equal(a["boxes"], b["boxes"])


def test_model_options_parse_true_and_false():
    from detector.train_config import parse_model_options

    assert parse_model_options(["rpn_stride4=false"]) == {"rpn_stride4": False}
    assert parse_model_options(["rpn_stride4=1"]) == {"rpn_stride4": True}
    with pytest.raises(ValueError, match="true or false"):
        parse_model_options(["rpn_stride4=maybe"])


def test_dim_images_reach_the_network_stretched_as_the_screen_shows_them(tmp_path):
    """stretch_dim: a dim image (values 2-40 of 255) enters the network stretched exactly as the
    canvas shows it (detector.images.stretch_contrast), in training (the per-step transform) and in
    use; a photo passes unchanged; checkpoints keep the setting, and one from before it reads off."""
    from dataclasses import replace

    import numpy as np

    from detector.heads import StretchingTransform, stretch_dim
    from detector.images import stretch_contrast
    from detector.step_random import draw_per_step

    rng = np.random.default_rng(0)
    dim = np.clip(rng.normal(4, 1.5, (64, 80, 3)), 0, 255).astype(np.uint8)
    dim[10:30, 20:50] = (20, 30, 40)
    photo = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)

    def tensor(a):
        return torch.from_numpy(a).permute(2, 0, 1).float() / 255

    screen = tensor(stretch_contrast(dim))
    assert not torch.equal(screen, tensor(dim))
    assert (stretch_dim(tensor(dim)) - screen).abs().max() <= 1 / 255 + 1e-6  # the screen's rounding
    assert torch.equal(stretch_dim(tensor(photo)), tensor(photo))

    cats = (Category("cell"),)
    det = build_model(categories=cats, weights="none", config=LIGHT)
    t = det.model.transform
    assert det.config.stretch_dim and isinstance(t, StretchingTransform)
    mean, std = torch.tensor(t.image_mean)[:, None, None], torch.tensor(t.image_std)[:, None, None]
    assert torch.allclose(t.normalize(tensor(dim)), (stretch_dim(tensor(dim)) - mean) / std)
    assert torch.allclose(t.normalize(tensor(photo)), (tensor(photo) - mean) / std)
    draw_per_step(det.model)  # training swaps in the per-step transform: it still stretches
    assert torch.allclose(det.model.transform.normalize(tensor(dim)), (stretch_dim(tensor(dim)) - mean) / std)

    again = detector_from_checkpoint(load_checkpoint(save_checkpoint(tmp_path / "m.pt", det)))
    assert again.config.stretch_dim and again.model.transform.stretch_dim
    ckpt = load_checkpoint(tmp_path / "m.pt")
    del ckpt["config"]["stretch_dim"]  # written before the option: its model never saw stretched input
    old = detector_from_checkpoint(ckpt)
    assert not old.config.stretch_dim
    assert torch.allclose(old.model.transform.normalize(tensor(dim)), (tensor(dim) - mean) / std)
    off = build_model(categories=cats, weights="none", config=replace(LIGHT, stretch_dim=False))
    assert not off.model.transform.stretch_dim  # --model-option stretch_dim=false


def test_a_floor_on_the_scale_resizes_large_images_by_it_in_use_and_in_training(tmp_path):
    """ModelConfig.min_scale: an image goes in at torchvision's size (shorter side min_size, longer
    at most max_size) or at min_scale times its own size, whichever is larger, the longer side
    still at most max_size; training's scale jitter scales the floor alike; boxes follow; the
    floor is kept with the model, and a checkpoint from before it reads none."""
    from dataclasses import replace

    cfg = replace(LIGHT, min_size=64, max_size=256, min_scale=2.0)
    det = build_model(categories=(Category("cell"),), weights="none", config=cfg)
    t = det.model.transform.eval()

    def size_in(h, w, transform=t, target=None):
        batch, targets = transform([torch.rand(3, h, w)], None if target is None else [target])
        return batch.image_sizes[0], targets

    assert size_in(32, 32)[0] == (64, 64)  # torchvision's rule: the shorter side to 64 (x2)
    assert size_in(128, 128)[0] == (256, 256)  # x2, not x0.5 (torchvision's 64 x 64)
    assert size_in(64, 200)[0] == (81, 256)  # x2 would make the longer side 400: x1.28 (256 / 200)
    plain = build_model(categories=(Category("cell"),), weights="none", config=replace(cfg, min_scale=0.0))
    assert size_in(128, 128, plain.model.transform.eval())[0] == (64, 64)

    t.train()
    t.min_size = (48, 64, 80)  # the trainer's jitter around the model's 64 px
    box = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    for _ in range(10):
        (h, w), targets = size_in(128, 128, t, {"boxes": box.clone(), "labels": torch.tensor([1])})
        assert (h, w) in {(192, 192), (256, 256), (320, 320)}  # x2 times 0.75 / 1 / 1.25
        assert targets[0]["boxes"][0].tolist() == pytest.approx((box[0] * h / 128).tolist())

    path = save_checkpoint(tmp_path / "m.pt", det)
    assert load_checkpoint(path)["config"]["min_scale"] == 2.0
    again = detector_from_checkpoint(load_checkpoint(path), (Category("cell"),))
    assert again.config.min_scale == 2.0 and again.model.transform.min_scale == 2.0
    older = {k: v for k, v in cfg.to_dict().items() if k != "min_scale"}
    assert ModelConfig.from_dict(older).min_scale == 0.0
