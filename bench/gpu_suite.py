"""The GPU suite: every CUDA check and GPU figure in one call, written as JSON lines as it goes.

    python bench/gpu_suite.py OUTDIR [--smoke [--jobs 2]] [--budget-s 450] [--only a,b] [--nuclei DIR]

Steps run in order of importance; each has its own timeout, and none starts once the budget is
spent (it is recorded as skipped), so a lent device's short lease always brings figures back.
``OUTDIR/results.jsonl`` gets one line per figure (``{**figure, "suite_step": ...}``) and one per
step (``{"suite_step": ..., "rc": ..., "seconds": ...}``); ``OUTDIR/STEP.log`` keeps each step's output.
``--smoke`` runs the same steps at toy sizes on the CPU (``make test`` does, so the suite is known
to work before a GPU ever sees it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PARALLEL, SEQUENTIAL = "parallel", "sequential"  # markers in the step list


def steps(smoke: bool, nuclei: str, tmp: Path) -> list[tuple[str, list[str], int]]:
    """(name, command, timeout seconds): on a GPU most important first, in the smoke longest first."""
    b = [PY, "-u"]
    if smoke:
        # Longest first (seconds on the 2-core VM, 2026-11-28: gui ~65, ladder ~45, torchrun ~38,
        # first_model ~30, train ~27, the rest <= 21), so two at a time end together (~135 s).
        dev = ["--device", "cpu"]
        return [
            ("gui", b + ["bench/bench_gui.py", "--images", "4", "--size", "96x72", "--launch-repeats", "1",
                         "--train-steps", "1", "--detections", "10", *dev], 240),
            ("ladder", b + ["bench/bench_ladder.py", "--smoke", *dev], 120),
            ("torchrun", _torchrun(tmp, smoke=True), 180),
            ("first_model", b + ["bench/bench_first_model.py", "--smoke", "--datasets", "demo", *dev], 180),
            ("train", b + ["bench/bench_train.py", "--steps", "1", "--warmup", "1", "--rounds", "1",
                           "--images", "2", "--batch-size", "2", "--size", "64", *dev], 120),
            ("predict", b + ["bench/bench_predict.py", "--images", "2", "--size", "96x72", "--min-size", "64",
                             "--detections", "10", *dev], 120),
            ("predict_channels_last", b + ["bench/bench_predict.py", "--images", "2", "--size", "96x72",
                                           "--min-size", "64", "--detections", "10", "--channels-last",
                                           "--no-baseline", *dev], 120),
            ("cuda_tests", [PY, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                            str(ROOT / "tests" / "test_cuda.py")], 120),
        ]
    dev = ["--device", "cuda"]
    big = ["--backbone", "resnet50_v2"]
    return [
        # issue 11's open target first: a useful model from random weights in <= 30 s
        ("first_model", b + ["bench/bench_first_model.py", "--nuclei", nuclei, *dev], 200),
        # correctness only, so these two share the GPU (no figure of theirs is a timing)
        PARALLEL,
        ("cuda_tests", [PY, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-x",
                        str(ROOT / "tests" / "test_cuda.py")], 150),
        ("torchrun", _torchrun(tmp, smoke=False), 150),
        SEQUENTIAL,
        ("train", b + ["bench/bench_train.py", "--steps", "16", "--warmup", "4", "--rounds", "2", "--images", "16",
                       "--batch-size", "4", "--size", "800", *big, *dev], 150),
        ("predict", b + ["bench/bench_predict.py", "--images", "96", "--size", "1066x800", "--min-size", "800",
                         *big, *dev], 150),
        ("gui", b + ["bench/bench_gui.py", "--images", "32", "--size", "1066x800", "--launch-repeats", "1",
                     "--train-steps", "20", *big, *dev], 150),
        ("ladder", b + ["bench/bench_ladder.py", *dev], 150),
        ("predict_channels_last", b + ["bench/bench_predict.py", "--images", "96", "--size", "1066x800",
                                       "--min-size", "800", "--channels-last", "--no-baseline", *big, *dev], 90),
    ]


def _torchrun(tmp: Path, smoke: bool) -> list[str]:
    """One torchrun process (NCCL on a GPU, gloo on a CPU): train, then sharded predict."""
    folder = tmp / "torchrun"
    dev = "cpu" if smoke else "cuda"
    size = "64" if smoke else "512"
    its = "2" if smoke else "30"
    script = (
        f"set -e; {PY} main.py demo {folder} --images 8 --width 256 --height 192 >/dev/null; "
        f"{PY} main.py import {folder} {folder}/ground_truth.json >/dev/null; "
        f"{PY} -m torch.distributed.run --nproc_per_node=1 main.py train {folder} --device {dev} "
        f"--weights none --iterations {its} --image-size {size} --holdout 0 --json-events "
        f"-o {tmp}/ddp.pt | grep -E '\"kind\": \"(start|done)\"'; "
        f"mkdir -p {folder}_new; {PY} main.py demo {folder}_new --images 8 --seed 5 >/dev/null; "
        f"{PY} -m torch.distributed.run --nproc_per_node=1 main.py predict {folder}_new --weights {tmp}/ddp.pt "
        f"--device {dev} --distributed"
    )
    return ["bash", "-c", script]


def _figures(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def environment() -> dict:
    info = {"python": platform.python_version(), "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M")}
    try:
        import torch
        import torchvision

        info.update(torch=torch.__version__, torchvision=torchvision.__version__,
                    cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    cpus=os.cpu_count())
    except Exception as exc:  # the suite still runs its steps and reports their own errors
        info["import_error"] = str(exc)
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True)
        info["nvidia_smi"] = r.stdout.strip()
    return info


def _first_done(running: list) -> int:
    """Index of the first of the running steps to end (or to pass its timeout)."""
    while True:
        for k, (_, proc, _, t, timeout) in enumerate(running):
            if proc.poll() is not None or time.perf_counter() - t > timeout:
                return k
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--budget-s", type=float, default=450.0, help="start no step after this many seconds")
    ap.add_argument("--only", default="", help="comma list of step names")
    ap.add_argument("--nuclei", default=str(ROOT.parent / "shared" / "data" / "nuclei"))
    ap.add_argument("--results", default=None, help="write results.jsonl here instead of OUTDIR")
    ap.add_argument("--jobs", type=int, default=None,
                    help="with --smoke, steps run this many at a time (default 2: the figures are not timings "
                         "there, and most of a toy step is one core importing torch)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = Path(args.results) if args.results else out / "results.jsonl"
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1", QT_QPA_PLATFORM="offscreen")
    failed = 0

    def record(obj: dict) -> None:
        with open(results, "a") as f:
            f.write(json.dumps(obj) + "\n")

    record({"suite_step": "environment", **environment()})
    def finish(name: str, proc: subprocess.Popen, log: Path, t: float, timeout: int) -> int:
        try:
            rc = proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = 124
        text = log.read_text(errors="replace") + (f"\n[timed out after {timeout} s]" if rc == 124 else "")
        for fig in _figures(text):
            record({**fig, "suite_step": name})
        tail = text.strip().splitlines()[-1:] if rc else []
        record({"suite_step": name, "rc": rc, "seconds": round(time.perf_counter() - t, 1),
                **({"tail": tail[0][-300:]} if tail else {})})
        print(f"{name:24s} rc={rc} {time.perf_counter() - t:6.1f} s", flush=True)
        return int(rc != 0)

    with tempfile.TemporaryDirectory() as tmp:
        parallel, running = False, []
        plan = steps(args.smoke, args.nuclei, Path(tmp)) + [SEQUENTIAL]
        jobs = max(1, args.jobs or 2) if args.smoke else 0  # 0: no cap (a GPU's parallel block is 2 steps)
        if args.smoke and jobs > 1:
            plan = [PARALLEL] + plan
        for entry in plan:
            if entry in (PARALLEL, SEQUENTIAL):
                for r in running:
                    failed += finish(*r)
                running, parallel = [], entry == PARALLEL
                continue
            name, cmd, timeout = entry
            if args.only and name not in args.only.split(","):
                continue
            spent = time.perf_counter() - t0
            if spent > args.budget_s:
                record({"suite_step": name, "rc": None, "skipped": f"budget spent ({spent:.0f} s)"})
                continue
            if parallel and jobs and len(running) >= jobs:
                failed += finish(*running.pop(_first_done(running)))
            log = out / f"{name}.log"
            with open(log, "w") as f:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
            running.append((name, proc, log, time.perf_counter(), timeout))
            if not parallel:
                failed += finish(*running.pop())
    print(f"suite: {failed} step(s) failed, {time.perf_counter() - t0:.0f} s; figures in {results}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
