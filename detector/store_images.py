"""The images table: the folder's files, their status and size, scanned and paged."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from .domain import ImageRecord, ImageStatus
from .images import ImageReadError, iter_folder, read_size
from .store_schema import ProjectError, ScanResult



class ImageTable:
    """Project's image methods; every write is its own transaction."""

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
