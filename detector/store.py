"""The project store: one SQLite database per labelled folder.

``Project`` keeps the connection, locking, migrations and meta here; its tables' methods are in
store_images.py, store_instances.py and store_catalog.py, behind the same transaction rules.

Every user edit is its own committed transaction (WAL mode), so a process killed at any point
keeps everything that was already shown as saved. Model predictions never replace an instance
a person made, edited or accepted.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .store_catalog import CategoryTable, ModelTable
from .store_images import ImageTable
from .store_instances import InstanceTable
from .store_schema import (_MIGRATIONS, DEFAULT_DBNAME, DEFAULT_DIRNAME, PALETTE, SCHEMA_VERSION,  # noqa: F401
                           ModelVersion, ProjectError, ScanResult, current_user, now)

LOCK_WAIT_S = 30.0  # how long opening a project waits for another process's lock


def _when_unlocked(fn):
    """``fn()``, tried again while the project is locked, for up to LOCK_WAIT_S.

    Another process opening the same project at the same moment (a second torchrun rank; the GUI
    and ``loupe predict``) may hold it while it sets up the write-ahead log. SQLite then answers
    "database is locked" at once, without waiting out the busy timeout (a read-only connection
    cannot help recover the log; a journal-mode change does not wait), so the wait is here."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Project(CategoryTable, ImageTable, InstanceTable, ModelTable):
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
        self._local = threading.local()  # one connection per thread, made on first use
        # each thread's connection by the thread's id: a QThreadPool job runs with a fresh Python
        # thread-local each time, so a thread's next job replaces (and closes) its last one's
        self._all_conns: dict[int, sqlite3.Connection] = {}
        self._conns_lock = threading.Lock()
        self._writers: set[sqlite3.Connection] = set()  # in a transaction: close() leaves them be
        self._retired: set[sqlite3.Connection] = set()  # ...and each closes when its transaction ends
        self._writing = threading.local()  # .conn: this thread's open transaction's (close keeps it)
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
        conn = getattr(self._writing, "conn", None) or getattr(self._local, "conn", None)
        if conn is None:
            def connect():
                c = sqlite3.connect(self.db_path, timeout=LOCK_WAIT_S, isolation_level=None,
                                    check_same_thread=False)
                try:
                    c.execute("PRAGMA journal_mode=WAL")
                    c.execute("PRAGMA synchronous=NORMAL")
                    c.execute("PRAGMA foreign_keys=ON")
                except BaseException:
                    c.close()
                    raise
                return c

            try:
                conn = _when_unlocked(connect)
            except sqlite3.DatabaseError as exc:
                raise ProjectError(f"{self.db_path}: not a readable Loupe project ({exc})") from exc
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._conns_lock:
                old = self._all_conns.get(threading.get_ident())
                self._all_conns[threading.get_ident()] = conn
                if old is not None and old in self._writers:  # not expected: a thread does one thing
                    self._retired.add(old)
                    old = None
            if old is not None:  # this thread's earlier job's (or an ended thread's, id reused)
                old.close()
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
        with self._conns_lock:
            self._writers.add(conn)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._end_write(conn)
            raise self._write_error(exc) from exc
        self._writing.conn = conn  # nested calls join it even if close() comes meanwhile
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
        finally:
            self._writing.conn = None
            self._end_write(conn)

    def _end_write(self, conn: sqlite3.Connection) -> None:
        with self._conns_lock:
            self._writers.discard(conn)
            retired = conn in self._retired
            self._retired.discard(conn)
        if retired:  # close() came while this transaction ran
            conn.close()

    def close(self) -> None:
        """Release the project: its lock and its connections now, except one in a transaction on
        another thread, which closes when that transaction ends. Closing it under the transaction
        crashed SQLite (a folder scan committing while a test closed the project under its window)
        and would lose the write; reads on other threads must be over (the window stops its
        workers first)."""
        if self._lock_file is not None:
            self._lock_file.close()  # releases the OS lock
            self._lock_file = None
        with self._conns_lock:
            conns, self._all_conns = list(self._all_conns.values()), {}
            self._retired.update(c for c in conns if c in self._writers)
            idle = [c for c in conns if c not in self._writers]
        self._local = threading.local()  # a later use opens a fresh connection
        for c in idle:
            try:
                c.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _probe(self) -> None:
        """Refuse, without changing a byte, a file that is not a Loupe project or is too new."""
        def read():
            with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=LOCK_WAIT_S) as c:
                tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() \
                    if "meta" in tables else None
            return tables, row

        try:
            tables, row = _when_unlocked(read)
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
        def meta():
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            return conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()

        try:
            row = _when_unlocked(meta)
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

