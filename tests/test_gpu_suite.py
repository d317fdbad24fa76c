"""The GPU suite at toy sizes on the CPU: every step runs and brings back its figures.

A lent GPU gets one short call; this keeps that call from being spent on a broken script.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_suite_smoke_runs_every_step(tmp_path):
    out = tmp_path / "suite"
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), str(out), "--smoke"],
                       env={**__import__("os").environ, "PYTHON": sys.executable},
                       capture_output=True, text=True, timeout=900)
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    status = {x["suite_step"]: x for x in lines if "rc" in x}
    assert set(status) == {"cuda_tests", "predict", "predict_channels_last", "train", "first_model",
                           "torchrun", "ladder", "gui"}, r.stdout
    bad = {k: v for k, v in status.items() if v["rc"] != 0}
    assert not bad, (bad, r.stdout[-2000:])
    figures = {x["suite_step"] for x in lines if "rc" not in x and x["suite_step"] != "environment"}
    assert figures >= {"predict", "predict_channels_last", "train", "first_model", "torchrun", "ladder", "gui"}
    by = {x["suite_step"]: x for x in lines if "rc" not in x}
    assert by["predict"]["ours_img_per_s"] > 0 and by["train"]["speedup_vs_tutorial_loop"] > 0
    assert by["first_model"]["profile"] == "cpu-fast"
    assert r.returncode == 0
