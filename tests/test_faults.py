"""Nothing lost, nothing crashes: kills at many points, a full disk, a read-only project, two
windows, out-of-memory, dying workers, and bad files of every kind."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.domain import ImageStatus, Instance
from detector.store import SCHEMA_VERSION, Project, ProjectError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fault_helpers as FH  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "fault_helpers.py"
KILLS = int(os.environ.get("LOUPE_KILL_POINTS", "12"))


def _spawn(*args):
    return subprocess.Popen([sys.executable, str(HELPER), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)


def _kill_after_lines(proc, n_lines, extra_delay):
    """Wait for ``n_lines`` reports, sleep a little more, SIGKILL; return the last report."""
    last = None
    for _ in range(n_lines):
        line = proc.stdout.readline()
        if not line:
            break
        last = line.strip()
    time.sleep(extra_delay)
    proc.kill()
    rest = proc.stdout.read()  # the same buffered reader: nothing read ahead is lost
    proc.wait()
    lines = [x for x in rest.splitlines() if x.strip()]
    return lines[-1].strip() if lines else last


@pytest.mark.slow
def test_kill_during_edits_loses_no_committed_edit(tmp_path):
    folder = tmp_path / "f"
    FH.setup_folder(folder)
    ops = FH.edit_ops()
    rng = random.Random(0)
    points = 0
    for _ in range(KILLS):
        # Each round starts from scratch so that replay() is exact.
        with Project(folder) as p:
            for i in p.instances(p.images()[0].id):
                p.delete_instance(i.id)
        proc = _spawn("edits", folder)
        last = _kill_after_lines(proc, rng.randint(1, 300), rng.uniform(0, 0.02))
        committed = int(last) if last and last.isdigit() else 0
        with Project(folder) as p:
            assert p.schema_version == SCHEMA_VERSION
            assert p._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            got = FH.observed(p, p.images()[0].id)
        # Every edit reported as committed is there; at most the one in flight is extra.
        exp = FH.replay(ops[:committed])
        diff = {m: (got.get(m), exp.get(m)) for m in set(got) | set(exp) if got.get(m) != exp.get(m)}
        assert got in (exp, FH.replay(ops[:committed + 1])), (committed, diff)
        points += 1
    assert points == KILLS


@pytest.mark.slow
def test_kill_while_storing_predictions_never_half_writes(tmp_path):
    folder = tmp_path / "f"
    FH.setup_folder(folder)
    rng = random.Random(1)
    for _ in range(KILLS):
        proc = _spawn("predictions", folder)
        _kill_after_lines(proc, rng.randint(1, 30), rng.uniform(0, 0.05))
        with Project(folder) as p:
            assert p._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            for img in p.images():
                preds = p.instances(img.id)
                assert len(preds) == FH.K_PREDICTIONS  # the old set or the new set, never a mix
                assert len({i.score for i in preds}) == 1


@pytest.mark.slow
def test_kill_during_training_keeps_a_readable_checkpoint(tmp_path):
    from conftest import labelled
    from detector.model import load_checkpoint

    p, _ = labelled(tmp_path / "f", n=2)
    p.close()
    out = tmp_path / "m.pt"
    rng = random.Random(2)
    loads = 0
    for _ in range(max(3, KILLS // 4)):
        proc = _spawn("train", tmp_path / "f", out)
        _kill_after_lines(proc, rng.randint(3, 8), rng.uniform(0, 0.5))
        if out.exists():
            ck = load_checkpoint(out)  # never truncated: written to a temp file, then renamed
            assert ck["step"] >= 1 and ck["complete"] is False
            loads += 1
    assert loads >= 2


def test_disk_full_then_space_returns(tmp_path):
    folder = tmp_path / "f"
    FH.setup_folder(folder)
    p = Project(folder)
    img = p.images()[0]
    cat = p.categories()[0]
    saved = [p.add_instance(Instance(cat.id, (1, 1, 5, 5), image_id=img.id)) for _ in range(3)]
    conn = p._conn()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")  # the disk is now full for this database
    big = Instance(cat.id, (1, 1, 5, 5), mask={"size": [48, 64], "counts": "x" * 20000}, image_id=img.id)
    with pytest.raises(ProjectError, match="disk is full") as e:
        for _ in range(50):
            p.add_instance(big)
    assert str(p.db_path) in str(e.value) and "nothing already saved is lost" in str(e.value)
    assert [i.id for i in p.instances(img.id)][:3] == [s.id for s in saved]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.execute("PRAGMA max_page_count=1073741823")  # space returns
    p.add_instance(big)
    p.close()
    with Project(folder) as again:
        assert len(again.instances(img.id)) >= 4


def test_read_only_project_mid_session(tmp_path, monkeypatch):
    folder = tmp_path / "f"
    FH.setup_folder(folder)
    p = Project(folder)
    img, cat = p.images()[0], p.categories()[0]
    kept = p.add_instance(Instance(cat.id, (1, 1, 5, 5), image_id=img.id))
    p.close()
    ro = sqlite3.connect(f"file:{p.db_path}?mode=ro", uri=True, isolation_level=None,
                         check_same_thread=False)
    ro.row_factory = sqlite3.Row
    monkeypatch.setattr(p, "_conn", lambda: ro)
    with pytest.raises(ProjectError, match="read-only"):
        p.add_instance(Instance(cat.id, (2, 2, 6, 6), image_id=img.id))
    assert [i.id for i in p.instances(img.id)] == [kept.id]  # reading still works
    ro.close()


def test_second_window_is_told_the_project_is_open(tmp_path):
    folder = tmp_path / "f"
    FH.setup_folder(folder)
    first = Project(folder, exclusive=True)
    with pytest.raises(ProjectError, match="open in another Loupe window"):
        Project(folder, exclusive=True)
    # The app itself says so and exits cleanly.
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), str(folder)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120,
                       env=dict(os.environ, QT_QPA_PLATFORM="offscreen", LOUPE_SMOKE="1"))
    assert r.returncode == 2 and "open in another Loupe window" in r.stderr
    first.close()
    Project(folder, exclusive=True).close()  # released with the first


def test_lock_dies_with_its_process(tmp_path):
    folder = tmp_path / "f"
    FH.setup_folder(folder)
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from detector.store import Project; " \
           f"p = Project({str(folder)!r}, exclusive=True); print('locked', flush=True); import time; time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(ProjectError):
        Project(folder, exclusive=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    Project(folder, exclusive=True).close()  # no stale lock after a crash


def test_foreign_or_newer_databases_are_refused(tmp_path):
    other = tmp_path / "other.db"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE customers (id INTEGER)")
    c.commit()
    c.close()
    with pytest.raises(ProjectError, match="not a Loupe project"):
        Project(tmp_path, other)
    assert sqlite3.connect(other).execute("SELECT name FROM sqlite_master").fetchall() == [("customers",)]


def _bad_images(folder: Path) -> dict[str, str]:
    """name -> words the reason must contain (None: readable)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.jpg"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(good, quality=95)
    (folder / "zero.png").write_bytes(b"")
    (folder / "trunc.jpg").write_bytes(good.read_bytes()[:300])
    (folder / "text.png").write_text("hello")
    Image.new("RGB", (8, 8)).save(folder / "really_png.jpg", format="PNG")  # wrong extension: fine
    Image.new("CMYK", (8, 8)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(folder / "deep.png")
    Image.new("P", (8, 8)).save(folder / "palette.png")
    Image.new("RGBA", (8, 8)).save(folder / "alpha.png")
    Image.new("RGB", (8, 8)).save(folder / "ünïcødé #1 %20.png")
    # A 'decompression bomb': a valid PNG header claiming 100,000 x 100,000 pixels.
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                                      chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))
    return {"good.jpg": None, "zero.png": "empty", "trunc.jpg": "truncated", "text.png": "not an image",
            "really_png.jpg": None, "cmyk.jpg": None, "deep.png": None, "palette.png": None,
            "alpha.png": None, "ünïcødé #1 %20.png": None, "bomb.png": "too large"}


def test_bad_images_are_flagged_with_reasons_and_skipped(tmp_path):
    from detector.images import ImageReadError, load_image

    expect = _bad_images(tmp_path / "f")
    for name, words in expect.items():
        if words is None:
            assert load_image(tmp_path / "f" / name).ndim == 3
        else:
            with pytest.raises(ImageReadError) as e:
                load_image(tmp_path / "f" / name)
            assert name in str(e.value) and words in str(e.value), str(e.value)
    with Project(tmp_path / "f") as p:
        p.scan()
        for rec in p.images():
            rec = p.ensure_size(rec)
            words = expect[rec.path]
            assert (rec.status is ImageStatus.UNREADABLE) == (words is not None), rec


def test_file_deleted_or_replaced_while_open(tmp_path):
    folder = tmp_path / "f"
    FH.setup_folder(folder)
    with Project(folder) as p:
        recs = {r.path: p.ensure_size(r) for r in p.images()}
        (folder / "im0.png").unlink()
        Image.new("RGB", (30, 20)).save(folder / "im1.png")
        os.utime(folder / "im1.png", (time.time() + 5, time.time() + 5))
        r = p.scan()
        assert r.missing == 1
        gone = p.image_by_path("im0.png")
        assert gone.status is ImageStatus.UNREADABLE and gone.reason == "file not found"
        replaced = p.ensure_size(p.image_by_path("im1.png"))
        assert (replaced.width, replaced.height) == (30, 20) and recs["im1.png"].width == 64
        Image.new("RGB", (64, 48)).save(folder / "im0.png")  # it comes back
        p.scan()
        assert p.image_by_path("im0.png").status is ImageStatus.NEW
