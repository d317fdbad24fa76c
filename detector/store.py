"""The project store: one SQLite database per labelled folder.

Every user edit is its own committed transaction (WAL mode), so a process killed at any point
keeps everything that was already shown as saved. Model predictions never replace an instance
a person made, edited or accepted.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import active
from .errors import LoupeError
from .domain import MODEL, Category, ImageRecord, ImageStatus, Instance
from .images import ImageReadError, iter_folder, read_size

SCHEMA_VERSION = 2
DEFAULT_DIRNAME = ".loupe"
DEFAULT_DBNAME = "project.db"

PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3")


class ProjectError(LoupeError):
    """A project that cannot be opened or changed; the message says which file and why."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "person"


_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE categories (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        color TEXT NOT NULL,
        keypoints TEXT NOT NULL DEFAULT '[]',
        skeleton TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        width INTEGER,
        height INTEGER,
        status TEXT NOT NULL DEFAULT 'new',
        reason TEXT,
        mtime REAL,
        bytes INTEGER
    );
    CREATE INDEX images_status ON images(status);
    CREATE TABLE instances (
        id INTEGER PRIMARY KEY,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        category_id INTEGER NOT NULL REFERENCES categories(id) ON DELETE CASCADE,
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        mask TEXT,
        keypoints TEXT NOT NULL DEFAULT '[]',
        score REAL,
        source TEXT NOT NULL,
        changed_by TEXT NOT NULL,
        changed_at TEXT NOT NULL,
        accepted INTEGER NOT NULL DEFAULT 0,
        crowd INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX instances_image ON instances(image_id);
    CREATE TABLE models (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        created_at TEXT NOT NULL,
        metrics TEXT NOT NULL DEFAULT '{}',
        settings TEXT NOT NULL DEFAULT '{}',
        images_seen INTEGER NOT NULL DEFAULT 0,
        active INTEGER NOT NULL DEFAULT 0
    );
    """,
    # 2: how unsure the model was about each image (detector.active), for "least confident first";
    # which model predicted it, so that an interrupted `loupe predict` resumes where it stopped
    2: """
    ALTER TABLE images ADD COLUMN uncertainty REAL;
    ALTER TABLE images ADD COLUMN predicted_by TEXT;
    CREATE INDEX images_uncertainty ON images(uncertainty)
    """,
}


@dataclass(frozen=True)
class ScanResult:
    added: int
    missing: int
    total: int
    changed: int = 0  # files replaced since the last scan (another mtime)
    back: int = 0  # files that were gone and are there again
    touched: tuple[str, ...] = ()  # paths of known images whose record the scan changed


@dataclass(frozen=True)
class ModelVersion:
    id: int
    name: str
    path: str
    created_at: str
    metrics: dict
    settings: dict
    images_seen: int
    active: bool


def _rle_to_text(rle: dict | None) -> str | None:
    if rle is None:
        return None
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return json.dumps({"size": list(rle["size"]), "counts": counts})


class Project:
    """A labelled folder and its database (``FOLDER/.loupe/project.db`` unless ``db_path``)."""

    def __init__(self, folder: str | os.PathLike, db_path: str | os.PathLike | None = None,
                 *, user: str | None = None, create: bool = True, exclusive: bool = False):
        self.root = Path(folder).resolve()
        if not self.root.is_dir():
            raise ProjectError(f"{folder}: not a folder")
        self.db_path = Path(db_path) if db_path else self.root / DEFAULT_DIRNAME / DEFAULT_DBNAME
        self.user = user or current_user()
        if not self.db_path.exists():
            if not create:
                raise ProjectError(f"{self.db_path}: no Loupe project here")
            try:
                self.db_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ProjectError(f"{self.db_path.parent}: cannot create the project folder "
                                   f"({exc.strerror}); use --project PATH for a read-only folder"
                                   ) from exc
        self._local = threading.local()
        self._all_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._lock_file = None
        if self.db_path.exists():
            self._probe()
        self._migrate()
        if exclusive:
            self._take_lock()

    def _take_lock(self) -> None:
        """One Loupe window per project: an OS lock that dies with the process (never stale)."""
        path = self.db_path.with_name(self.db_path.name + ".lock")
        f = open(path, "a+")
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            self.close()
            raise ProjectError(f"{self.root}: this project is open in another Loupe window "
                               f"({holder}); close it there first") from None
        f.seek(0)
        f.truncate()
        import socket

        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        self._lock_file = f

    # -- connections and transactions -------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as exc:
                raise ProjectError(f"{self.db_path}: not a readable Loupe project ({exc})") from exc
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._conns_lock:
                self._all_conns.append(conn)
        return conn

    def _write_error(self, exc: sqlite3.Error) -> ProjectError:
        text = str(exc).lower()
        if "full" in text:
            why = ("the disk is full: free some space; nothing already saved is lost and editing "
                   "resumes when there is room")
        elif "readonly" in text or "read-only" in text:
            why = ("the project file became read-only: make it writable again, or reopen the "
                   "folder with --project pointing somewhere writable")
        elif "locked" in text or "busy" in text:
            why = "another program holds the project busy; try again"
        else:
            why = str(exc)
        return ProjectError(f"{self.db_path}: could not save: {why}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One all-or-nothing write; nested calls join the outer transaction."""
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._write_error(exc) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._write_error(exc) from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # releases the OS lock
            self._lock_file = None
        with self._conns_lock:
            for c in self._all_conns:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._all_conns.clear()
        self._local = threading.local()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _probe(self) -> None:
        """Refuse, without changing a byte, a file that is not a Loupe project or is too new."""
        try:
            with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True) as c:
                tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() \
                    if "meta" in tables else None
        except sqlite3.DatabaseError as exc:
            raise ProjectError(f"{self.db_path}: not a readable Loupe project ({exc})") from exc
        if row is None and tables - {"meta"}:
            raise ProjectError(f"{self.db_path}: an SQLite file that is not a Loupe project "
                               f"(tables: {', '.join(sorted(tables - {'meta'}))}); not touched")
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise ProjectError(f"{self.db_path}: made by a newer Loupe (schema {row[0]}; this "
                               f"Loupe reads up to {SCHEMA_VERSION}); update Loupe to open it")

    def _migrate(self) -> None:
        conn = self._conn()
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ProjectError(f"{self.db_path}: not a readable Loupe project ({exc})") from exc
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise ProjectError(f"{self.db_path}: made by a newer Loupe (schema {version}; this "
                               f"Loupe reads up to {SCHEMA_VERSION}); update Loupe to open it")
        with self.transaction() as c:
            # Read again under the write lock: another process (a torchrun rank) may have
            # migrated between our first look and now.
            row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 0
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in filter(str.strip, _MIGRATIONS[v].split(";")):
                    c.execute(stmt)
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES('schema_version', ?)",
                      (str(SCHEMA_VERSION),))

    @property
    def schema_version(self) -> int:
        row = self._conn().execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0])

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (key, value))

    # -- categories -------------------------------------------------------------------------
    @staticmethod
    def _category(row: sqlite3.Row) -> Category:
        return Category(name=row["name"], color=row["color"],
                        keypoints=tuple(json.loads(row["keypoints"])),
                        skeleton=tuple(tuple(p) for p in json.loads(row["skeleton"])),
                        id=row["id"])

    def categories(self) -> list[Category]:
        rows = self._conn().execute("SELECT * FROM categories ORDER BY id").fetchall()
        return [self._category(r) for r in rows]

    def category(self, category_id: int) -> Category:
        row = self._conn().execute("SELECT * FROM categories WHERE id=?", (category_id,)).fetchone()
        if row is None:
            raise ProjectError(f"no category with id {category_id}")
        return self._category(row)

    def add_category(self, cat: Category) -> Category:
        color = cat.color
        with self.transaction() as c:
            if cat.color == Category.color:  # default colour: pick the next unused one
                n = c.execute("SELECT COUNT(*) FROM categories").fetchone()[0]
                color = PALETTE[n % len(PALETTE)]
            try:
                cur = c.execute(
                    "INSERT INTO categories(name, color, keypoints, skeleton) VALUES(?,?,?,?)",
                    (cat.name, color, json.dumps(list(cat.keypoints)),
                     json.dumps([list(p) for p in cat.skeleton])))
            except sqlite3.IntegrityError as exc:
                raise ProjectError(f"a category named {cat.name!r} already exists") from exc
        return Category(cat.name, color, tuple(cat.keypoints), tuple(cat.skeleton), cur.lastrowid)

    def ensure_category(self, cat: Category) -> Category:
        """The project's category named ``cat.name``, added if missing (safe between processes)."""
        with self.transaction():
            found = next((c for c in self.categories() if c.name == cat.name), None)
            return found if found is not None else self.add_category(cat)

    def update_category(self, cat: Category) -> Category:
        if cat.id is None:
            raise ProjectError("update_category needs a stored category")
        with self.transaction() as c:
            c.execute("UPDATE categories SET name=?, color=?, keypoints=?, skeleton=? WHERE id=?",
                      (cat.name, cat.color, json.dumps(list(cat.keypoints)),
                       json.dumps([list(p) for p in cat.skeleton]), cat.id))
        return cat

    def delete_category(self, category_id: int) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM categories WHERE id=?", (category_id,))

    # -- images -----------------------------------------------------------------------------
    @staticmethod
    def _image(row: sqlite3.Row) -> ImageRecord:
        return ImageRecord(path=row["path"], width=row["width"], height=row["height"],
                           status=ImageStatus(row["status"]), reason=row["reason"], id=row["id"],
                           uncertainty=row["uncertainty"], predicted_by=row["predicted_by"])

    def scan(self, on_new: Callable[[list[ImageRecord]], None] | None = None,
             chunk: int = 2000) -> ScanResult:
        """Register new image files under the folder; files that vanished become unreadable.

        New files are registered as they are found, ``chunk`` at a time, and each chunk's records
        go to ``on_new`` (the image list grows while a big folder is read)."""
        conn = self._conn()
        known = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT path, mtime, status FROM images")}
        found: list[tuple[str, float, int]] = []
        pending: list[tuple[str, float, int]] = []
        added = 0

        def register() -> None:
            nonlocal added
            with self.transaction() as c:
                top = c.execute("SELECT COALESCE(MAX(id), 0) FROM images").fetchone()[0]
                # OR IGNORE: another process sharing the project (a torchrun rank) may have
                # just registered the same file.
                c.executemany("INSERT OR IGNORE INTO images(path, mtime, bytes) VALUES(?,?,?)", pending)
                rows = c.execute("SELECT * FROM images WHERE id>? ORDER BY id", (top,)).fetchall()
            added += len(pending)
            pending.clear()
            if on_new is not None and rows:
                on_new([self._image(r) for r in rows])

        for entry in iter_folder(self.root):
            found.append(entry)
            if entry[0] not in known:
                pending.append(entry)
                if len(pending) >= chunk:
                    register()
        if pending:
            register()
        present = {p for p, _, _ in found}
        missing = [p for p, (_, st) in known.items()
                   if p not in present and st != ImageStatus.UNREADABLE.value]
        changed = [(p, m) for p, m, _ in found if p in known and known[p][0] != m]
        came_back = [p for p in present if p in known and known[p][1] == ImageStatus.UNREADABLE.value]
        back = len(came_back)
        with self.transaction() as c:
            c.executemany("UPDATE images SET status='unreadable', reason='file not found' "
                          "WHERE path=?", [(p,) for p in missing])
            # A replaced file: forget its size, re-check readability on next use.
            c.executemany("UPDATE images SET mtime=?, width=NULL, height=NULL, reason=NULL, "
                          "status=CASE WHEN status='unreadable' THEN 'new' ELSE status END "
                          "WHERE path=?", [(m, p) for p, m in changed])
            c.executemany("UPDATE images SET status='new', reason=NULL WHERE path=? AND "
                          "status='unreadable' AND reason='file not found'",
                          [(p,) for p in present if p in known])
        return ScanResult(added=added, missing=len(missing), total=len(found), changed=len(changed),
                          back=back, touched=tuple(missing + [p for p, _ in changed] + came_back))

    def images(self, status: ImageStatus | Iterable[ImageStatus] | None = None) -> list[ImageRecord]:
        conn = self._conn()
        if status is None:
            rows = conn.execute("SELECT * FROM images ORDER BY path").fetchall()
        else:
            sts = [status] if isinstance(status, ImageStatus) else list(status)
            q = ",".join("?" * len(sts))
            rows = conn.execute(f"SELECT * FROM images WHERE status IN ({q}) ORDER BY path",
                                [s.value for s in sts]).fetchall()
        return [self._image(r) for r in rows]

    def image_count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def iter_images(self, start: int = 0, chunk: int = 5000) -> Iterator[list[ImageRecord]]:
        """Every image in file-name order (as ``images()``), from row ``start`` on, ``chunk`` at a
        time: a 100k-image list read without holding it all as SQLite rows at once."""
        cur = self._conn().execute("SELECT * FROM images ORDER BY path LIMIT -1 OFFSET ?", (start,))
        while rows := cur.fetchmany(chunk):
            yield [self._image(r) for r in rows]

    def first_images(self, n: int, order: str = "") -> list[ImageRecord]:
        """The first ``n`` images in file-name order (the path index: fast at any size), or with
        ``order="uncertainty"`` least confident first: predicted images by falling uncertainty,
        then those not predicted yet, then reviewed and unreadable ones (the image list's order)."""
        if order == "uncertainty":
            q = ("SELECT * FROM images ORDER BY CASE WHEN status IN ('reviewed', 'unreadable') THEN 2 "
                 "WHEN uncertainty IS NULL THEN 1 ELSE 0 END, uncertainty DESC, path LIMIT ?")
        else:
            q = "SELECT * FROM images ORDER BY path LIMIT ?"
        return [self._image(r) for r in self._conn().execute(q, (n,)).fetchall()]

    def image(self, image_id: int) -> ImageRecord:
        row = self._conn().execute("SELECT * FROM images WHERE id=?", (image_id,)).fetchone()
        if row is None:
            raise ProjectError(f"no image with id {image_id}")
        return self._image(row)

    def image_by_path(self, path: str) -> ImageRecord | None:
        row = self._conn().execute("SELECT * FROM images WHERE path=?", (path,)).fetchone()
        return self._image(row) if row else None

    def status_counts(self) -> dict[ImageStatus, int]:
        rows = self._conn().execute("SELECT status, COUNT(*) FROM images GROUP BY status")
        counts = {s: 0 for s in ImageStatus}
        for st, n in rows:
            counts[ImageStatus(st)] = n
        return counts

    def abspath(self, image: ImageRecord) -> Path:
        return self.root / image.path

    def set_status(self, image_id: int, status: ImageStatus, reason: str | None = None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE images SET status=?, reason=? WHERE id=?",
                      (status.value, reason, image_id))

    def set_size(self, image_id: int, width: int, height: int) -> None:
        with self.transaction() as c:
            c.execute("UPDATE images SET width=?, height=? WHERE id=?", (width, height, image_id))

    def ensure_size(self, image: ImageRecord) -> ImageRecord:
        """Fill in the size from the file header; an unreadable file is marked, not raised."""
        if image.width and image.height:
            return image
        try:
            w, h = read_size(self.abspath(image))
        except ImageReadError as exc:
            self.mark_unreadable(image.id, exc.reason)
            return ImageRecord(image.path, None, None, ImageStatus.UNREADABLE, exc.reason, image.id)
        self.set_size(image.id, w, h)
        return ImageRecord(image.path, w, h, image.status, image.reason, image.id)

    def mark_unreadable(self, image_id: int, reason: str) -> None:
        self.set_status(image_id, ImageStatus.UNREADABLE, reason)

    def add_image(self, path: str, width: int | None = None, height: int | None = None) -> ImageRecord:
        with self.transaction() as c:
            cur = c.execute("INSERT INTO images(path, width, height) VALUES(?,?,?)",
                            (path, width, height))
        return self.image(cur.lastrowid)

    # -- instances --------------------------------------------------------------------------
    @staticmethod
    def _instance(row: sqlite3.Row) -> Instance:
        return Instance(
            category_id=row["category_id"],
            box=(row["x1"], row["y1"], row["x2"], row["y2"]),
            mask=json.loads(row["mask"]) if row["mask"] else None,
            keypoints=tuple((float(x), float(y), int(v)) for x, y, v in json.loads(row["keypoints"])),
            score=row["score"], source=row["source"], changed_by=row["changed_by"],
            changed_at=row["changed_at"], accepted=bool(row["accepted"]), crowd=bool(row["crowd"]),
            image_id=row["image_id"], id=row["id"])

    def image_ids_with(self, what: str | int, image_id: int | None = None) -> set[int]:
        """Ids of the images holding ``what``: a category id, "predictions" (the model's, not yet
        accepted) or "nothing" (no instance at all); only ``image_id`` is looked at when given."""
        one = "" if image_id is None else " AND image_id=?"
        args: tuple = () if image_id is None else (image_id,)
        if what == "predictions":
            sql = f"SELECT DISTINCT image_id FROM instances WHERE changed_by='{MODEL}' AND accepted=0{one}"
        elif what == "nothing":
            sql = ("SELECT id FROM images WHERE NOT EXISTS (SELECT 1 FROM instances WHERE image_id=images.id)"
                   + ("" if image_id is None else " AND id=?"))
        else:
            sql, args = f"SELECT DISTINCT image_id FROM instances WHERE category_id=?{one}", (int(what), *args)
        return {r[0] for r in self._conn().execute(sql, args)}

    def instances(self, image_id: int) -> list[Instance]:
        rows = self._conn().execute("SELECT * FROM instances WHERE image_id=? ORDER BY id",
                                    (image_id,)).fetchall()
        return [self._instance(r) for r in rows]

    def instance(self, instance_id: int) -> Instance | None:
        row = self._conn().execute("SELECT * FROM instances WHERE id=?", (instance_id,)).fetchone()
        return self._instance(row) if row else None

    def instance_count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM instances").fetchone()[0]

    @staticmethod
    def _row(inst: Instance) -> tuple:
        x1, y1, x2, y2 = (float(v) for v in inst.box)
        return (inst.image_id, inst.category_id, x1, y1, x2, y2, _rle_to_text(inst.mask),
                json.dumps([[float(x), float(y), int(v)] for x, y, v in inst.keypoints]),
                inst.score, inst.source, inst.changed_by, inst.changed_at or now(),
                int(inst.accepted), int(inst.crowd))

    _INSERT = ("INSERT INTO instances(image_id, category_id, x1, y1, x2, y2, mask, keypoints, score,"
               " source, changed_by, changed_at, accepted, crowd) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)")

    def _insert(self, c: sqlite3.Connection, inst: Instance) -> Instance:
        cur = c.execute(self._INSERT, self._row(inst))
        return inst.with_(id=cur.lastrowid, changed_at=inst.changed_at or now())

    def add_instance(self, inst: Instance, *, by: str | None = None) -> Instance:
        """Store a new instance (a person's, unless ``by='model'``); returns it with its id."""
        if inst.image_id is None:
            raise ProjectError("an instance needs an image_id")
        by = by or (MODEL if inst.changed_by == MODEL else self.user)
        inst = inst.with_(changed_by=by, changed_at=now(), id=None)
        with self.transaction() as c:
            stored = self._insert(c, inst)
            if by != MODEL:
                self._touch_image(c, inst.image_id)
        return stored

    def restore_instance(self, inst: Instance) -> Instance:
        """Put back a deleted instance with its old id (used by undo)."""
        with self.transaction() as c:
            c.execute(self._INSERT.replace("(image_id", "(id, image_id").replace("VALUES(?", "VALUES(?,?"),
                      (inst.id, *self._row(inst)))
            self._touch_image(c, inst.image_id)
        return inst

    def update_instance(self, inst: Instance, *, by: str | None = None) -> Instance:
        """Write an edited instance; it now belongs to the person who changed it."""
        if inst.id is None:
            raise ProjectError("update_instance needs a stored instance")
        inst = inst.with_(changed_by=by or self.user, changed_at=now())
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE instances SET image_id=?, category_id=?, x1=?, y1=?, x2=?, y2=?, mask=?, "
                "keypoints=?, score=?, source=?, changed_by=?, changed_at=?, accepted=?, crowd=? "
                "WHERE id=?", (*self._row(inst), inst.id))
            if cur.rowcount == 0:
                raise ProjectError(f"instance {inst.id} no longer exists")
            self._touch_image(c, inst.image_id)
        return inst

    def delete_instance(self, instance_id: int) -> None:
        with self.transaction() as c:
            row = c.execute("SELECT image_id FROM instances WHERE id=?", (instance_id,)).fetchone()
            c.execute("DELETE FROM instances WHERE id=?", (instance_id,))
            if row:
                self._touch_image(c, row[0])

    def _touch_image(self, c: sqlite3.Connection, image_id: int) -> None:
        # A person's edit moves a new or predicted image into review.
        c.execute("UPDATE images SET status='in review' WHERE id=? AND status IN ('new','predicted')",
                  (image_id,))

    def replace_predictions(self, image_id: int, predicted: Iterable[Instance],
                            model: str | None = None) -> list[Instance]:
        """Swap the model's untouched instances on an image for new ones, in one transaction.
        ``model`` names the model that made them (``predicted_by``).

        Instances a person made, edited or accepted stay as they are; reviewed images are left
        alone entirely.
        """
        out: list[Instance] = []
        with self.transaction() as c:
            row = c.execute("SELECT status FROM images WHERE id=?", (image_id,)).fetchone()
            if row is None or row[0] in (ImageStatus.REVIEWED.value, ImageStatus.UNREADABLE.value):
                return out
            c.execute("DELETE FROM instances WHERE image_id=? AND changed_by=? AND accepted=0",
                      (image_id, MODEL))
            stamp = now()
            for p in predicted:
                inst = p.with_(image_id=image_id, source=MODEL, changed_by=MODEL,
                               changed_at=stamp, accepted=False, id=None)
                out.append(self._insert(c, inst))
            # what the model is unsure about is judged on all it said, shown or not
            c.execute("UPDATE images SET uncertainty=?, predicted_by=? WHERE id=?",
                      (active.uncertainty(out), model, image_id))
            if row[0] == ImageStatus.NEW.value:
                c.execute("UPDATE images SET status='predicted' WHERE id=?", (image_id,))
        return out

    # -- model versions ---------------------------------------------------------------------
    @staticmethod
    def _model(row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(row["id"], row["name"], row["path"], row["created_at"],
                            json.loads(row["metrics"]), json.loads(row["settings"]),
                            row["images_seen"], bool(row["active"]))

    def models(self) -> list[ModelVersion]:
        return [self._model(r) for r in self._conn().execute("SELECT * FROM models ORDER BY id")]

    def active_model(self) -> ModelVersion | None:
        row = self._conn().execute("SELECT * FROM models WHERE active=1").fetchone()
        return self._model(row) if row else None

    def add_model(self, name: str, path: str, metrics: dict, settings: dict, images_seen: int,
                  *, activate: bool = False) -> ModelVersion:
        with self.transaction() as c:
            if activate:
                c.execute("UPDATE models SET active=0")
            cur = c.execute("INSERT INTO models(name, path, created_at, metrics, settings, "
                            "images_seen, active) VALUES(?,?,?,?,?,?,?)",
                            (name, path, now(), json.dumps(metrics), json.dumps(settings),
                             images_seen, int(activate)))
        return self._model(self._conn().execute("SELECT * FROM models WHERE id=?",
                                                (cur.lastrowid,)).fetchone())

    def activate_model(self, model_id: int) -> None:
        with self.transaction() as c:
            c.execute("UPDATE models SET active=(id=?)", (model_id,))

    def delete_model(self, model_id: int) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM models WHERE id=?", (model_id,))
