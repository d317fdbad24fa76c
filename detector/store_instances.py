"""The instances table: boxes, masks and keypoints; a person's edits and the model's predictions."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

from . import active
from .domain import MODEL, ImageStatus, Instance
from .store_schema import ProjectError, _rle_to_text, now



class InstanceTable:
    """Project's instance methods; predictions never replace what a person made, edited or accepted."""

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
