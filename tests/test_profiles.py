"""Training profiles: which settings a one-click Train fills in, by device, data and start."""

from dataclasses import replace

import pytest
import torch

from detector import devices, profiles, train_setup
from detector.domain import Category
from detector.model import ModelConfig, build_model, coco_cache_path, save_checkpoint
from detector.train_config import CPU_MAX_SIZE, GPU_SIZE, TrainConfig
from detector.train_setup import apply_profile, learned_start

CPU, GPU = torch.device("cpu"), torch.device("cuda")
DEMO = [(320, 240)] * 8  # the demo's scenes: shapes of ~70 px
NUCLEI = [(256, 256)] * 10 + [(520, 696)] * 10  # small nuclei, ~15 px


def test_fast_sizes_scale_the_median_object_to_about_48_px_within_the_devices_cap():
    assert profiles.fast_size(DEMO, [70.0] * 20) == 160  # 240 * 48 / 70, rounded to 32
    assert profiles.fast_size(NUCLEI, [15.0] * 50) == CPU_MAX_SIZE  # enlarged up to the cap
    assert profiles.fast_size(NUCLEI, [15.0] * 50, GPU_SIZE) == GPU_SIZE
    assert profiles.fast_size(NUCLEI, [40.0] * 50, GPU_SIZE) == 480  # 388 * 48 / 40
    assert profiles.fast_size(DEMO, [500.0]) == 128  # never below 128
    assert profiles.fast_size([], []) == CPU_MAX_SIZE and profiles.fast_size([], [], GPU_SIZE) == GPU_SIZE


def test_auto_picks_by_device_and_by_whether_the_weights_are_learned():
    cpu = profiles.choose("auto", CPU, DEMO, [70.0])
    assert (cpu.name, cpu.backbone, cpu.batch_size, cpu.time_budget_s) == ("cpu-fast", "resnet18", 2, 150.0)
    assert profiles.choose("auto", CPU, DEMO, [70.0], learned=True).name == "cpu-fast"
    full = profiles.choose("auto", GPU, NUCLEI, [15.0], learned=True)
    assert (full.name, full.backbone, full.min_size, full.time_budget_s) == ("gpu", None, GPU_SIZE, None)
    fast = profiles.choose("auto", GPU, NUCLEI, [15.0], learned=False)
    assert (fast.name, fast.backbone, fast.batch_size) == ("gpu-fast", "resnet18", 4)
    assert fast.min_size == GPU_SIZE and fast.time_budget_s == profiles.GPU_FAST_BUDGET_S
    assert fast.model_overrides == profiles.LIGHT_OVERRIDES and "no learned weights" in fast.reason
    assert profiles.choose("auto", GPU, DEMO, [70.0]).min_size == 160  # small data stays small on a GPU too
    assert profiles.choose("gpu-fast", CPU, DEMO, [70.0]).name == "gpu-fast"  # asked for by name: any device
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        profiles.choose("fast", CPU, DEMO)


def _checkpoint(path, **meta):
    det = build_model(categories=(Category("a"),), weights="none",
                      config=ModelConfig(backbone="resnet18", min_size=64, max_size=96))
    return str(save_checkpoint(path, det, **meta))


def test_learned_start_reads_the_cache_and_the_checkpoints_own_record(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert not learned_start(TrainConfig(weights="none"))
    assert not learned_start(TrainConfig(weights="coco"))  # nothing in torchvision's cache
    cache = coco_cache_path()
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"weights")
    assert learned_start(TrainConfig(weights="coco"))
    assert not learned_start(TrainConfig(weights="coco", backbone="resnet18"))  # COCO's weights do not fit it
    scratch = _checkpoint(tmp_path / "scratch.pt", from_random_init=True)
    tuned = _checkpoint(tmp_path / "tuned.pt", from_random_init=False)
    older = _checkpoint(tmp_path / "older.pt")  # saved before checkpoints said
    assert not learned_start(TrainConfig(weights=scratch))
    assert not learned_start(TrainConfig(weights="none", resume=scratch))
    assert learned_start(TrainConfig(weights=tuned)) and learned_start(TrainConfig(weights=older))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert learned_start(TrainConfig(weights=str(junk)))  # the real load refuses it, naming the problem


def test_a_gpu_run_from_random_weights_gets_the_light_model_and_a_time_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(train_setup, "pick_device", lambda name=None: GPU)
    out, prof = apply_profile(TrainConfig(weights="none"), NUCLEI)  # no objects known: the images' own size
    assert prof.name == "gpu-fast" and "resnet18 backbone, 384 px, batch 4, 64 sampled regions" in prof.reason
    assert (out.backbone, out.min_size, out.batch_size, out.iterations, out.time_budget_s) == \
        ("resnet18", 384, 4, 1500, profiles.GPU_FAST_BUDGET_S)
    assert out.model_overrides["fpn_channels"] == 128
    # what the person set wins; a step count of their own replaces the time budget
    out, _ = apply_profile(TrainConfig(weights="none", iterations=300, batch_size=8, min_size=640), NUCLEI)
    assert (out.iterations, out.time_budget_s, out.batch_size, out.min_size) == (300, None, 8, 640)
    # a later round from a model trained here from random weights stays on the light profile ...
    scratch = _checkpoint(tmp_path / "scratch.pt", from_random_init=True)
    out, prof = apply_profile(TrainConfig(weights=scratch), NUCLEI)
    assert prof.name == "gpu-fast" and out.time_budget_s == profiles.GPU_FAST_BUDGET_S
    assert "fpn_channels" not in out.model_overrides  # the pyramid's width is the checkpoint's too
    tuned = _checkpoint(tmp_path / "tuned.pt", from_random_init=False)
    out, prof = apply_profile(TrainConfig(weights=tuned), NUCLEI)
    assert (prof.name, out.backbone, out.min_size) == ("gpu", None, GPU_SIZE)  # learned: its own network
    # ... and COCO weights in the cache get the full model at 800 px
    cache = coco_cache_path()
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"weights")
    out, prof = apply_profile(TrainConfig(weights="coco"), NUCLEI)
    assert (prof.name, out.backbone, out.min_size, out.time_budget_s) == ("gpu", None, GPU_SIZE, None)


def test_cpu_fast_may_go_on_past_its_budget_unless_the_person_set_a_length(monkeypatch):
    monkeypatch.setattr(train_setup, "pick_device", lambda name=None: CPU)
    out, prof = apply_profile(TrainConfig(weights="none"), DEMO)
    assert (out.time_budget_s, out.time_budget_max_s) == (150.0, profiles.CPU_FAST_BUDGET_MAX_S)
    assert "up to 270 s below 40 passes" in prof.reason
    for own in (dict(time_budget_s=100.0), dict(iterations=50), dict(epochs=3)):
        out, _ = apply_profile(TrainConfig(weights="none", **own), DEMO)
        assert out.time_budget_max_s is None, own
    out, _ = apply_profile(TrainConfig(weights="none", time_budget_max_s=200.0), DEMO)
    assert (out.time_budget_s, out.time_budget_max_s) == (150.0, 200.0)


def test_cpu_fast_trains_large_inputs_on_windows_and_small_ones_whole(monkeypatch):
    """Images that go in at 384 px or more train as 256 px windows (nuclei enlarged to the cap);
    the demo's small inputs stay whole; --crop chooses, 0 turns it off; the profile line says so."""
    for f32 in (False, True):
        assert profiles.choose("auto", CPU, NUCLEI, [15.0], float32_cpu=f32).crop == profiles.CROP_PX
        assert profiles.choose("auto", CPU, DEMO, [70.0], float32_cpu=f32).crop == 0
    assert profiles.choose("auto", GPU, NUCLEI, [15.0]).crop == 0  # not measured on a GPU
    monkeypatch.setattr(train_setup, "pick_device", lambda name=None: CPU)
    base = TrainConfig(weights="none")
    got, prof = apply_profile(base, NUCLEI)  # no objects known: the images' own size (388 px)
    assert got.min_size >= 384 and got.crop == 256 and "trained on 256 px windows" in prof.reason
    assert apply_profile(replace(base, crop=0), NUCLEI)[1].reason.endswith("sampled regions")
    assert apply_profile(replace(base, crop=192), NUCLEI)[0].crop == 192
    got, prof = apply_profile(base, DEMO)
    assert got.crop == 0 and "windows" not in prof.reason


def test_a_cpu_that_trains_in_float32_gets_fewer_pixels_and_an_rpn_from_stride_8(monkeypatch):
    """Without bfloat16 units a CPU step's cost follows the pixels: objects at ~32 px, not 48, and
    no RPN at stride 4. A CPU with AMX keeps the profile measured there, unless autocast is off."""
    f32 = profiles.choose("auto", CPU, DEMO, [70.0], float32_cpu=True)
    amx = profiles.choose("auto", CPU, DEMO, [70.0])
    assert (f32.min_size, amx.min_size) == (128, 160)  # 240 * 32 / 70 -> 110, never below 128
    assert profiles.choose("auto", CPU, DEMO, [51.0], float32_cpu=True).min_size == 160  # 240 * 32 / 51 -> 151
    assert f32.model_overrides == {**profiles.LIGHT_OVERRIDES, "rpn_stride4": False} and "float32" in f32.reason
    assert amx.model_overrides == profiles.LIGHT_OVERRIDES and "stride" not in amx.reason
    assert profiles.choose("auto", CPU, NUCLEI, [15.0], float32_cpu=True).min_size == CPU_MAX_SIZE
    assert profiles.choose("auto", GPU, DEMO, [70.0], float32_cpu=True).model_overrides == profiles.LIGHT_OVERRIDES
    monkeypatch.setattr(train_setup, "pick_device", lambda name=None: CPU)
    for bf16, amp, coarse in ((False, True, True), (True, True, False), (True, False, True)):
        monkeypatch.setattr(devices, "cpu_bf16_fast", lambda bf16=bf16: bf16)
        out, prof = apply_profile(TrainConfig(weights="none", amp=amp), DEMO)
        assert (out.model_overrides.get("rpn_stride4") is False) == coarse, (bf16, amp)
    out, _ = apply_profile(TrainConfig(weights="none", model_overrides={"rpn_stride4": True}), DEMO)
    assert out.model_overrides["rpn_stride4"] is True  # what the person set wins


def _samples(specs):
    """Samples of (width, height, object side) with four square objects each."""
    from detector.domain import Instance
    from detector.train_data import Sample

    return [Sample(f"im{k}.png", [Instance(category_id=1, box=(10.0 * j, 10.0, 10.0 * j + o, 10.0 + o))
                                  for j in range(4)], w, h) for k, (w, h, o) in enumerate(specs)]


def test_a_floor_on_the_scale_keeps_large_images_objects_findable(monkeypatch):
    """torchvision gives every image one shorter side: nuclei's 1024 px images went in at half
    size and their ~16 px nuclei at 8 px. Where a reviewed image larger than the median would
    have its objects shrunk under half the size aimed at, every image is resized by at least the
    median image's factor (the long side at most 4x the input size), where the run trains on
    windows. Images of one size, photos whose objects grow with the image and whole-image runs
    keep torchvision's rule; the person's setting wins."""
    microscopy = [(256, 256, 15)] * 12 + [(1024, 1024, 16)] * 2 + [(696, 520, 21)] * 2
    assert profiles.scale_floor(microscopy, 512, 853) == 2.0  # 512 / the median 256
    assert profiles.scale_floor([(320, 240, 70)] * 8, 224, 373) == 0.0  # one size: never changed
    photos = [(640, 480, 60)] * 10 + [(4000, 3000, 380)] * 3  # objects grow with the image
    assert profiles.scale_floor(photos, 512, 853) == 0.0
    assert profiles.scale_floor([], 512, 853) == 0.0
    assert profiles.scale_floor([(256, 256, 15)] * 3 + [(1024, 1024, 50)], 512, 853) == 0.0  # 50 -> 25 px: kept
    assert profiles.scale_floor([(256, 256, 15)] * 3 + [(1024, 1024, 50)], 512, 853, object_px=64) == 2.0

    monkeypatch.setattr(train_setup, "pick_device", lambda name=None: CPU)
    monkeypatch.setattr(devices, "cpu_bf16_fast", lambda: True)
    samples = _samples(microscopy)
    out, prof = apply_profile(TrainConfig(weights="none"), [(s.width, s.height) for s in samples], samples)
    assert out.min_size == 512 and out.model_overrides["min_scale"] == 2.0 and out.max_size == 2048
    assert "larger images kept at x2.00 (long side up to 2048 px)" in prof.reason
    assert out.windows() == (256, 512, 2048)
    demo = _samples([(320, 240, 70)] * 8)
    out, prof = apply_profile(TrainConfig(weights="none"), [(320, 240)] * 8, demo)
    assert not out.model_overrides.get("min_scale") and out.max_size == int(out.min_size * 5 / 3)
    assert "kept at" not in prof.reason
    own = TrainConfig(weights="none", model_overrides={"min_scale": 0.0})  # off, as the person asked
    out, _ = apply_profile(own, [(s.width, s.height) for s in samples], samples)
    assert out.model_overrides["min_scale"] == 0.0 and out.max_size == 853
    out, _ = apply_profile(TrainConfig(weights="none", profile="reference"), [(s.width, s.height) for s in samples],
                           samples)
    assert "min_scale" not in out.model_overrides  # torchvision's settings, as asked
    out, _ = apply_profile(TrainConfig(weights="none", crop=0), [(s.width, s.height) for s in samples], samples)
    assert "min_scale" not in out.model_overrides  # whole images: measured with windows only
    out, prof = apply_profile(TrainConfig(weights="none", model_overrides={"min_scale": 1.5}), [(320, 240)] * 8, demo)
    assert out.max_size == 4 * out.min_size and "kept at x1.50" in prof.reason  # the person's floor
    again = _samples([(256, 256, 15)] * 4)  # a later round from a floored model, its images of one size
    out, _ = apply_profile(TrainConfig(weights="none"), [(256, 256)] * 4, again)
    assert out.model_overrides["min_scale"] == 0.0  # this round's choice replaces the checkpoint's
