"""The light model's trunk from ImageNet weights (files the tests make where torchvision keeps
them): loaded and fine-tuned the torchvision way, refused when corrupt or foreign, and a run
without them says which file to fetch."""

import pytest
import torch
from torchvision.models import resnet18

from detector import pretrained as P
from detector import trunk as T
from detector.model import load_checkpoint
from detector.train_config import TrainConfig
from detector.train_setup import prepare_detector, trunk_clause, with_start_defaults
from detector.training import train_project

from conftest import in_torch_cache, labelled, small_train_config


@pytest.fixture
def project(tmp_path):
    p, _ = labelled(tmp_path / "shapes", n=4)
    yield p
    p.close()


@pytest.fixture
def imagenet_sd():
    torch.manual_seed(7)
    net = resnet18()
    with torch.no_grad():  # statistics unlike a fresh BatchNorm's, so "kept" is visible
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture
def trunk_cache(tmp_path, monkeypatch, imagenet_sd):
    """A ResNet-18-shaped state dict under torchvision's name in its cache, hash registered."""
    return in_torch_cache(monkeypatch, tmp_path, imagenet_sd, T.trunk_cache_path)


def _start(project, **kw):
    """The model and settings a run would start from (without running it)."""
    cfg = small_train_config(weights="coco", **kw)
    det, _ = prepare_detector(project, cfg)
    return det, with_start_defaults(cfg, det)


def test_the_light_model_starts_its_trunk_from_imagenet_weights_and_keeps_stem_and_statistics(
        project, tmp_path, trunk_cache, imagenet_sd):
    out = tmp_path / "m.pt"
    train_project(project, small_train_config(weights="coco", iterations=4), out)
    ckpt = load_checkpoint(out)
    sd = ckpt["model"]
    assert ckpt["trunk"] == "torchvision's ImageNet weights"
    assert "trunk starts from torchvision's ImageNet weights" in ckpt["notice"]
    assert ckpt["profile_reason"].endswith(", trunk from ImageNet weights")
    assert ckpt["config"]["trainable_layers"] == 3  # torchvision's recipe for a pretrained backbone
    assert ckpt["train_config"]["freeze_bn"] is True
    body = "backbone.body."
    # the stem and first stage stay as loaded; so do the trunk's BatchNorm statistics
    for key in ("conv1.weight", "layer1.0.conv1.weight", "bn1.running_mean", "layer3.1.bn2.running_var"):
        assert torch.equal(sd[body + key], imagenet_sd[key]), key
    # later stages learn from the loaded weights
    assert not torch.equal(sd[body + "layer4.1.conv2.weight"], imagenet_sd["layer4.1.conv2.weight"])
    assert (sd[body + "layer4.1.conv2.weight"] - imagenet_sd["layer4.1.conv2.weight"]).abs().max() < 0.05
    # the pyramid's BatchNorm starts random and learns its statistics
    fpn_bn = [k for k in sd if k.startswith("backbone.fpn.") and k.endswith("running_var")]
    assert fpn_bn and any(not torch.allclose(sd[k], torch.ones_like(sd[k])) for k in fpn_bn)
    # the next round starts from the checkpoint: its trunk is the checkpoint's, the pyramid's
    # statistics keep learning as in the first round
    cfg = small_train_config(weights=str(out))
    det, _ = prepare_detector(project, cfg)
    cfg = with_start_defaults(cfg, det)
    assert trunk_clause(cfg, det) == "" and cfg.freeze_bn and det.meta["trunk"]


def test_without_the_file_the_run_starts_random_and_says_what_to_fetch(project, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    det, cfg = _start(project)
    assert "trunk" not in det.meta
    assert det.config.trainable_layers == 5 and not cfg.freeze_bn
    assert T.TRUNK_WEIGHTS.url in det.notice and str(T.trunk_cache_path()) in det.notice
    assert "random trunk: no resnet18-f37072fd.pth (ImageNet, 45 MB)" in trunk_clause(cfg, det)


def test_a_corrupt_or_foreign_trunk_file_is_refused_naming_it(project, tmp_path, trunk_cache, imagenet_sd):
    good = trunk_cache.read_bytes()
    trunk_cache.write_bytes(good[: len(good) // 2])  # a partial download
    sd, why = T.trunk_state_dict(T.IMAGENET)
    assert sd is None and str(trunk_cache) in why and "corrupt or partial" in why

    other = tmp_path / "mobilenet.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, other)
    sd, why = T.trunk_state_dict(str(other))
    assert sd is None and str(other) in why and "not a torchvision ResNet-18" in why
    (tmp_path / "junk.pth").write_bytes(b"junk")
    sd, why = T.trunk_state_dict(str(tmp_path / "junk.pth"))
    assert sd is None and "junk.pth" in why
    det, cfg = _start(project, trunk=str(other))  # a run asked to use the foreign file starts random
    assert "trunk" not in det.meta and "not a torchvision ResNet-18" in det.notice
    assert trunk_clause(cfg, det) == f", random trunk: {other} refused (the run's notice says why)"

    mine = tmp_path / "my_resnet18.pth"  # a file the person names (no hash in its name)
    torch.save({"state_dict": imagenet_sd}, mine)
    sd, where = T.trunk_state_dict(str(mine))
    assert sd is not None and where == str(mine) and torch.equal(sd["conv1.weight"], imagenet_sd["conv1.weight"])


def test_the_trunk_option_reaches_the_run_and_none_means_random(project, tmp_path, trunk_cache):
    cfg = TrainConfig(trunk="none")
    assert TrainConfig.from_args(_parse(cfg.to_argv())).trunk == "none"
    det, cfg = _start(project, trunk="none")
    assert "trunk" not in det.meta and "random trunk weights, as asked" in det.notice
    assert det.config.trainable_layers == 5 and not cfg.freeze_bn
    det, cfg = _start(project)  # the default: the file in the cache
    assert det.meta["trunk"] and det.config.trainable_layers == 3 and cfg.freeze_bn


def test_an_offline_machine_tries_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(P, "download", lambda *a, **k: pytest.fail("a download was tried"))
    sd, why = T.trunk_state_dict(T.IMAGENET)
    assert sd is None and T.TRUNK_WEIGHTS.url in why
    monkeypatch.setenv("LOUPE_OFFLINE", "0")
    tried = []
    monkeypatch.setattr(P, "download", lambda url, dest, **k: tried.append(url) or (_ for _ in ()).throw(
        P.WeightsError(f"{url}: cannot download (no network). {k.get('offline_text')}")))
    sd, why = T.trunk_state_dict(T.IMAGENET)
    assert tried == [T.TRUNK_WEIGHTS.url] and sd is None and "cannot download" in why
    assert str(T.trunk_cache_path()) in why


def _parse(argv):
    from detector.cli import build_parser

    return build_parser().parse_args(["train", "folder", "-o", "m.pt", *argv])
