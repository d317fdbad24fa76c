"""The light model's trunk from ImageNet weights (files the tests make where torchvision keeps
them): loaded and fine-tuned the torchvision way, refused when corrupt or foreign, and a run
without them says which file to fetch."""

import functools
import hashlib
import io
import threading
import time

import pytest
import torch
from torchvision.models import resnet18

from detector import pretrained as P
from detector import trunk as T
from detector.model import load_checkpoint
from detector.train_config import Hook, TrainConfig
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


class _SlowServer:
    """torchvision's download server, played from bytes: ``delay`` seconds a read (a 1 MB chunk)."""

    def __init__(self, data: bytes, delay: float, cancel=None, cancel_after: int = 0):
        self.data, self.delay, self.cancel, self.cancel_after = data, delay, cancel, cancel_after
        self.reads = 0

    def __call__(self, req, timeout):
        server = self

        class Response(io.BytesIO):
            status, headers = 200, {"Content-Length": str(len(server.data))}

            def read(self, n=-1):
                time.sleep(server.delay)
                server.reads += 1
                if server.cancel is not None and server.reads == server.cancel_after:
                    server.cancel.set()  # what the app's Cancel does (SIGTERM sets it in `loupe train`)
                return super().read(n)

        return Response(server.data)


@pytest.fixture
def imagenet_bytes(tmp_path, monkeypatch, imagenet_sd):
    """The trunk file's bytes, its hash registered under torchvision's name; an empty cache, online."""
    buf = io.BytesIO()
    torch.save(imagenet_sd, buf)
    data = buf.getvalue()
    monkeypatch.setitem(P.KNOWN_HASHES, T.trunk_cache_path().name, hashlib.sha256(data).hexdigest()[:8])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("LOUPE_OFFLINE", "0")
    return data


class _Started(Hook):
    def before_train(self, trainer):
        self.started = trainer.started


def test_a_trunk_downloaded_for_the_run_shows_progress_and_is_left_out_of_its_time_budget(
        project, tmp_path, monkeypatch, imagenet_bytes):
    server = _SlowServer(imagenet_bytes, delay=0.05)
    monkeypatch.setattr(P, "download", functools.partial(P.download, opener=server))
    events, spy = [], _Started()
    t0 = time.perf_counter()
    result = train_project(project, small_train_config(weights="coco", iterations=2), tmp_path / "m.pt",
                           on_event=events.append, hooks=[spy])
    assert result.ok and load_checkpoint(tmp_path / "m.pt")["trunk"] == "torchvision's ImageNet weights"
    assert T.trunk_cache_path().read_bytes() == imagenet_bytes
    kinds = [e.kind for e in events]
    first_start = kinds.index("start")
    fetching = events[:first_start]
    assert fetching and all(e.kind == "prepare" for e in fetching)  # all before the run starts
    mb = len(imagenet_bytes) >> 20
    assert [e.step for e in fetching] == list(range(mb + 1)) and {e.total_steps for e in fetching} == {mb}
    assert "downloading resnet18-f37072fd.pth" in fetching[-1].message
    # the time budget's clock starts after the download: the run's own time is all it counts
    slept = server.reads * server.delay
    assert spy.started - t0 >= slept * 0.9, (spy.started - t0, slept)


def test_cancel_during_the_trunks_download_stops_the_run_and_keeps_the_partial_file(
        project, tmp_path, monkeypatch, imagenet_bytes):
    cancel = threading.Event()
    server = _SlowServer(imagenet_bytes, delay=0.0, cancel=cancel, cancel_after=3)
    monkeypatch.setattr(P, "download", functools.partial(P.download, opener=server))
    events = []
    result = train_project(project, small_train_config(weights="coco", iterations=2), tmp_path / "m.pt",
                           on_event=events.append, cancel=cancel)
    assert result.cancelled and not result.ok and result.checkpoint is None
    assert not (tmp_path / "m.pt").exists()
    assert [e.kind for e in events][-1] == "cancelled" and "partial download is kept" in events[-1].message
    assert "start" not in [e.kind for e in events]
    part = T.trunk_cache_path().with_name(T.trunk_cache_path().name + ".partial")
    assert part.stat().st_size == 3 << 20 and not T.trunk_cache_path().exists()
