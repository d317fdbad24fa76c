import sqlite3
import threading

import numpy as np
import pytest

from detector import masks as M
from detector.domain import MODEL, Category, ImageStatus, Instance
from detector.store import Project, ProjectError


def _inst(image_id, cat_id, box=(1.0, 2.0, 30.0, 40.0), **kw):
    m = np.zeros((96, 128), dtype=np.uint8)
    m[2:40, 1:30] = 1
    return Instance(cat_id, box, M.encode(m), image_id=image_id, **kw)


def test_round_trip_survives_reopen(demo):
    folder, _ = demo
    with Project(folder) as p:
        p.scan()
        cat = p.add_category(Category("cell", keypoints=("a", "b"), skeleton=((1, 2),)))
        img = p.images()[0]
        inst = p.add_instance(_inst(img.id, cat.id, keypoints=((3.0, 4.0, 2), (0.0, 0.0, 0))))
        assert inst.id is not None and inst.changed_by == p.user
        assert p.image(img.id).status is ImageStatus.IN_REVIEW
    with Project(folder) as p:
        got = p.instances(img.id)
        assert len(got) == 1
        g = got[0]
        assert g.box == (1.0, 2.0, 30.0, 40.0) and g.keypoints == ((3.0, 4.0, 2), (0.0, 0.0, 0))
        assert M.area(g.mask) == 38 * 29
        assert p.categories()[0].skeleton == ((1, 2),)
        moved = p.update_instance(g.with_(box=(5.0, 5.0, 20.0, 20.0)))
        assert p.instance(moved.id).box == (5.0, 5.0, 20.0, 20.0)
        p.delete_instance(moved.id)
        assert p.instances(img.id) == []
        p.restore_instance(moved)
        assert p.instance(moved.id).box == (5.0, 5.0, 20.0, 20.0)


def test_predictions_never_replace_a_persons_work(project):
    cat = project.add_category(Category("thing"))
    img = project.images()[0]
    mine = project.add_instance(_inst(img.id, cat.id))
    first = project.replace_predictions(img.id, [_inst(img.id, cat.id, score=0.9)])
    assert first[0].changed_by == MODEL
    accepted = project.update_instance(first[0].with_(accepted=True))
    project.replace_predictions(img.id, [_inst(img.id, cat.id, box=(0, 0, 5, 5), score=0.4)])
    ids = {i.id for i in project.instances(img.id)}
    assert mine.id in ids and accepted.id in ids and len(ids) == 3
    # A new round replaces only the untouched prediction.
    project.replace_predictions(img.id, [])
    assert {i.id for i in project.instances(img.id)} == {mine.id, accepted.id}
    # Reviewed images are never touched by the model.
    project.set_status(img.id, ImageStatus.REVIEWED)
    assert project.replace_predictions(img.id, [_inst(img.id, cat.id)]) == []
    assert len(project.instances(img.id)) == 2


def test_concurrent_reader_and_writer(demo):
    folder, _ = demo
    writer = Project(folder)
    writer.scan()
    cat = writer.add_category(Category("c"))
    img = writer.images()[0]
    errors, seen = [], []

    def write():
        try:
            for i in range(150):
                writer.add_instance(_inst(img.id, cat.id, box=(i, 0, i + 5, 5)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read():
        reader = Project(folder)
        try:
            for _ in range(150):
                n = len(reader.instances(img.id))
                assert not seen or n >= seen[-1]  # never goes backwards, never half-written
                seen.append(n)
        except Exception as exc:  # pragma: no cover
            errors.append(exc)
        finally:
            reader.close()

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(writer.instances(img.id)) == 150
    writer.close()


def test_closing_while_another_thread_writes_loses_nothing_and_lets_go_after(demo):
    """A window closing its project while a folder scan commits on a pool thread: closing that
    thread's connection under it crashed SQLite (a segfault in CI) or lost the write. Now the
    writer's transaction, nested calls included, lands whole; then every connection is closed
    (SQLite removes the -wal file when its last connection closes)."""
    folder, _ = demo
    p = Project(folder)
    p.scan()
    wal = p.db_path.with_name(p.db_path.name + "-wal")
    inside, go, errors = threading.Event(), threading.Event(), []

    def write():
        try:
            with p.transaction():
                p.ensure_category(Category("before close"))
                inside.set()
                go.wait(10)
                p.ensure_category(Category("after close"))  # a nested transaction joins this one
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    idle_done = threading.Event()

    def idle_reader():  # a thread that read once and stays alive, idle
        p.image_count()
        idle_done.set()
        go.wait(10)

    threads = [threading.Thread(target=write), threading.Thread(target=idle_reader)]
    for t in threads:
        t.start()
    assert inside.wait(10) and idle_done.wait(10)
    p.close()
    go.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert not wal.exists()
    with Project(folder) as again:
        assert {c.name for c in again.categories()} >= {"before close", "after close"}


def _open_handles(path) -> int:
    """How many file descriptors of this process are open on ``path`` (Linux's /proc)."""
    import os

    fds = "/proc/self/fd"
    return sum(1 for fd in os.listdir(fds) if os.path.realpath(os.path.join(fds, fd)) == str(path.resolve()))


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="counts open files in /proc")
def test_jobs_on_a_thread_pool_do_not_pile_up_connections(qapp, project):
    """A QThreadPool job runs with a fresh Python thread-local each time, so each job that reads
    the project opened a connection of its own, all kept open until the project closed. A
    thread's next job now closes its last one's: ten jobs leave one connection, not ten."""
    from PySide6.QtCore import QRunnable, QThreadPool

    counts, done = [], threading.Semaphore(0)

    class Job(QRunnable):
        def run(self):
            counts.append(project.image_count())
            done.release()

    pool = QThreadPool()
    pool.setMaxThreadCount(1)
    pool.setExpiryTimeout(60_000)  # one thread for all ten, as the app's jobs one after another
    open_after = []
    for _ in range(10):
        pool.start(Job())
        assert done.acquire(timeout=10)
        open_after.append(_open_handles(project.db_path))
    pool.waitForDone()
    assert len(counts) == 10 and len(set(counts)) == 1
    # SQLite keeps a closed connection's file open while others in the process hold the file
    # (POSIX locks) and reuses it for the next: a plateau from the second job on, not one more a job
    assert open_after[-1] == open_after[1] <= 3, open_after
    project.close()
    assert _open_handles(project.db_path) == 0


def test_newer_schema_is_refused_and_garbage_db_explained(tmp_path):
    with Project(tmp_path) as p:
        p.set_meta("schema_version", "99")
    with pytest.raises(ProjectError, match="newer Loupe"):
        Project(tmp_path)
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ProjectError, match="bad.db"):
        Project(tmp_path, bad)


def test_failed_transaction_leaves_nothing(project):
    cat = project.add_category(Category("x"))
    img = project.images()[0]
    with pytest.raises(RuntimeError):
        with project.transaction():
            project.add_instance(_inst(img.id, cat.id))
            raise RuntimeError("boom")
    assert project.instances(img.id) == []


def test_read_only_folder_uses_project_path(tmp_path, demo):
    folder, _ = demo
    db = tmp_path / "elsewhere" / "p.db"
    db.parent.mkdir()
    with Project(folder, db) as p:
        assert p.scan().added == 6
    assert db.exists() and not (folder / ".loupe" / "project.db").exists()
    # WAL mode is on: readers never block the writer.
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_project_from_schema_1_is_migrated_and_keeps_everything(tmp_path, demo):
    """A project written by the previous Loupe (schema 1, no uncertainty column) opens, is
    migrated in place, keeps its images and instances, and gets uncertainties as it is predicted."""
    import sqlite3

    from detector import store

    folder, _ = demo
    db = folder / ".loupe" / "project.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as c:
        c.executescript(store._MIGRATIONS[1])
        c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        c.execute("INSERT INTO meta VALUES('schema_version', '1')")
        c.execute("INSERT INTO categories(name, color) VALUES('square', '#e6194b')")
        c.execute("INSERT INTO images(path, width, height, status) VALUES('img_0000.png', 128, 96, 'reviewed')")
        c.execute("INSERT INTO instances(image_id, category_id, x1, y1, x2, y2, source, changed_by, changed_at) "
                  "VALUES(1, 1, 1, 2, 30, 40, 'person', 'ana', '2026-01-01T00:00:00.000+00:00')")
    with Project(folder) as p:
        assert p.schema_version == store.SCHEMA_VERSION == 2
        (rec,) = p.images()
        assert (rec.path, rec.status, rec.uncertainty) == ("img_0000.png", ImageStatus.REVIEWED, None)
        (inst,) = p.instances(rec.id)
        assert (inst.box, inst.changed_by) == ((1.0, 2.0, 30.0, 40.0), "ana")
        p.scan()
        new = next(r for r in p.images() if r.status is ImageStatus.NEW)
        preds = [Instance(1, (0, 0, 9, 9), score=s, source=MODEL, changed_by=MODEL) for s in (0.5, 0.97)]
        p.replace_predictions(new.id, preds)
        assert p.image(new.id).uncertainty == pytest.approx(1.0 + 0.1944, abs=1e-3)  # H(0.5) + H(0.97)


def test_the_first_page_and_the_paged_list_in_either_order(project):
    """What the window lists before the background job: file-name order by the path index, or
    least confident first (predicted by falling uncertainty, then new, then reviewed)."""
    recs = project.images()
    assert project.image_count() == len(recs)
    assert project.first_images(3) == recs[:3]
    assert [r for chunk in project.iter_images(2, chunk=3) for r in chunk] == recs[2:]
    a, b, c = recs[0], recs[1], recs[2]
    with project.transaction() as conn:
        conn.execute("UPDATE images SET status='predicted', uncertainty=0.5 WHERE id=?", (c.id,))
        conn.execute("UPDATE images SET status='predicted', uncertainty=2.0 WHERE id=?", (b.id,))
    project.set_status(a.id, ImageStatus.REVIEWED)
    unsure = project.first_images(len(recs), "uncertainty")
    assert [r.id for r in unsure[:2]] == [b.id, c.id] and unsure[-1].id == a.id
    assert [r.path for r in unsure[2:-1]] == sorted(r.path for r in recs[3:])


def test_opening_waits_out_another_process_lock_and_refuses_other_errors(monkeypatch):
    """Two processes opening one project at once (torchrun ranks): SQLite may answer "database is
    locked" at once while the other sets up its write-ahead log. Opening tries again, for up to
    LOCK_WAIT_S; any other error, or a lock that outlasts the wait, is raised as it is."""

    from detector import store

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "opened"

    assert store._when_unlocked(flaky) == "opened" and len(calls) == 3

    def broken():
        calls.append(1)
        raise sqlite3.OperationalError("disk I/O error")

    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        store._when_unlocked(broken)
    assert len(calls) == 1

    monkeypatch.setattr(store, "LOCK_WAIT_S", 0.2)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store._when_unlocked(lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database is locked")))
