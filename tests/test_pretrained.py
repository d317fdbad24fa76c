"""Pretrained start: COCO weights from the cache (files the tests make), hash checks, resumable
download, the class mapping, and what the mapped model predicts and trains."""

import hashlib
import io
import threading

import pytest
import torch

from detector import pretrained as P
from detector.domain import Category
from detector.inference import load_detector, predict_project
from detector.model import ModelConfig, _architecture, load_checkpoint
from detector.store import Project
from detector.synthetic import generate

from conftest import in_torch_cache


@pytest.fixture(scope="module")
def coco_sd():
    torch.manual_seed(1)
    return _architecture(91, 0, ModelConfig()).state_dict()


@pytest.fixture
def coco_cache(tmp_path, monkeypatch, coco_sd):
    """A COCO-shaped (random) state dict where torchvision keeps its weights, hash registered."""
    return in_torch_cache(monkeypatch, tmp_path, coco_sd, P.cache_path)


def test_hash_in_the_name_refuses_a_corrupt_or_partial_file(tmp_path):
    good = tmp_path / "w.pth"
    torch.save({"a": torch.ones(3)}, good)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    named = tmp_path / f"maskrcnn_resnet50_fpn_v2_coco-{digest[:8]}.pth"
    named.write_bytes(good.read_bytes())
    assert P.file_hash_ok(named)
    named.write_bytes(good.read_bytes()[:-10])  # cut short
    assert not P.file_hash_ok(named)
    with pytest.raises(P.WeightsError, match="corrupt or partial"):
        P.read_state_dict(named)


def test_state_dict_files_are_checked(tmp_path, coco_sd):
    p = tmp_path / "mine.pth"
    torch.save({"model": coco_sd, "optimizer": {}}, p)  # torchvision's reference scripts' layout
    assert set(P.read_state_dict(p)) == set(coco_sd)
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(P.WeightsError, match="not a torchvision Mask R-CNN"):
        P.read_state_dict(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(P.WeightsError, match="junk.pth"):
        P.read_state_dict(tmp_path / "junk.pth")


class _Response(io.BytesIO):
    def __init__(self, data: bytes, status: int):
        super().__init__(data)
        self.status = status
        self.headers = {"Content-Length": str(len(data))}


def test_download_resumes_reports_progress_and_checks_the_hash(tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB
    digest = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / f"maskrcnn_resnet50_fpn_v2_coco-{digest[:8]}.pth"
    asked = []

    def server(req, timeout):
        rng = req.headers.get("Range")
        asked.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        return _Response(payload[start:], 206 if start else 200)

    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done >= 300_000:
            cancel.set()

    with pytest.raises(P.WeightsError, match="cancelled"):
        P.download("http://x/w.pth", dest, progress=progress, cancel=cancel, chunk=100_000, opener=server)
    part = dest.with_name(dest.name + ".partial")
    assert part.stat().st_size == 300_000 and not dest.exists()
    P.download("http://x/w.pth", dest, progress=lambda d, t: seen.append((d, t)), chunk=100_000, opener=server)
    assert asked == [None, "bytes=300000-"]  # the second try resumed
    assert dest.read_bytes() == payload and not part.exists()
    assert seen[-1] == (len(payload), len(payload))
    # a server that sends other bytes: refused, deleted, never renamed into place
    bad = tmp_path / f"other-{digest[:8]}.pth"
    with pytest.raises(P.WeightsError, match="corrupt"):
        P.download("http://x/w.pth", bad, opener=lambda req, timeout: _Response(b"x" * 1000, 200))
    assert not bad.exists() and not bad.with_name(bad.name + ".partial").exists()


def test_coco_start_maps_classes_predicts_only_them_and_trains_on(tmp_path, coco_cache, coco_sd):
    folder = tmp_path / "f"
    generate(folder, n_images=3, seed=2, size=(128, 96))
    with Project(folder) as p:
        p.scan()
        p.ensure_category(Category("pedestrian"))
        mapping = {"person": "pedestrian", "car": "vehicle", "truck": "vehicle"}
        assert P.default_mapping([Category("Dog"), Category("traffic_light")]) == {
            "dog": "Dog", "traffic light": "traffic_light"}
        det = P.coco_start(p, mapping, tmp_path / "coco.pt")
        names = [c.name for c in p.categories()]
        assert "pedestrian" in names and "vehicle" in names  # the missing one was added
        ckpt = load_checkpoint(tmp_path / "coco.pt")
        assert ckpt["category_map"] == mapping and [c["name"] for c in ckpt["categories"]] == ["person", "car", "truck"]
        got = ckpt["model"]["roi_heads.box_predictor.cls_score.weight"]
        src = coco_sd["roi_heads.box_predictor.cls_score.weight"]
        assert torch.equal(got[1], src[1]) and torch.equal(got[2], src[3]) and torch.equal(got[3], src[8])
        assert p.active_model().path == str(tmp_path / "coco.pt")
        assert "person -> pedestrian" in det.notice
        # predictions are stored under the project's categories only
        det = load_detector(p, None)
        assert {c.id for c in det.categories} == {c.id for c in p.categories() if c.name in ("pedestrian", "vehicle")}
        predict_project(p, device="cpu")
        allowed = {c.id for c in p.categories() if c.name in ("pedestrian", "vehicle")}
        for r in p.images():
            assert all(i.category_id in allowed for i in p.instances(r.id))
    with pytest.raises(P.WeightsError, match="not COCO classes"):
        with Project(folder) as p:
            P.coco_start(p, {"unicorn": "x"}, tmp_path / "u.pt")


def test_without_the_file_the_message_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "f"
    generate(folder, n_images=1, seed=2, size=(64, 48))
    with Project(folder) as p, pytest.raises(P.WeightsError) as err:
        P.coco_start(p, {"person": "person"}, tmp_path / "c.pt")
    msg = str(err.value)
    assert "download.pytorch.org" in msg and str(P.cache_path()) in msg


def test_coco_weights_for_a_new_model_are_fetched_with_a_timeout_and_never_when_offline(
        tmp_path, monkeypatch, coco_sd):
    """build_model("coco") without the file: one hash-checked download with a timeout (torch.hub's
    own waits forever on a silent network), loaded weights-only; offline, none is tried."""
    import detector.model as M

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    tried = []

    def fake_download(url, dest, **kw):
        tried.append((url, kw.get("timeout")))
        if kw.get("progress"):
            kw["progress"](0, 170 << 20)
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save(coco_sd, dest)
        monkeypatch.setitem(P.KNOWN_HASHES, dest.name, hashlib.sha256(dest.read_bytes()).hexdigest()[:8])
        return dest

    monkeypatch.setattr(P, "download", fake_download)
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", lambda *a, **k: pytest.fail("torch.hub's download"))
    assert M.coco_state_dict("mask") is None  # the suite runs offline (conftest)
    assert tried == []
    monkeypatch.setenv("LOUPE_OFFLINE", "0")
    seen = []  # a training run's "prepare" events come from here: the file's name, its bytes
    sd = M.coco_state_dict("mask", progress=lambda *a: seen.append(a))
    assert seen == [(M.coco_cache_path("mask").name, 0, 170 << 20)]
    assert tried == [(P.MASK_WEIGHTS.url, 10.0)] and torch.equal(sd["backbone.body.conv1.weight"],
                                                                 coco_sd["backbone.body.conv1.weight"])
    assert M.coco_state_dict("mask") is not None and len(tried) == 1  # from the cache the second time

    def no_network(url, dest, **kw):
        raise P.WeightsError(f"{url}: cannot download (timed out)")

    monkeypatch.setattr(P, "download", no_network)
    assert M.coco_state_dict("keypoint") is None
