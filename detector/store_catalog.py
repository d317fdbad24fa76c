"""The categories and the model versions of a project."""

from __future__ import annotations

import json
import sqlite3

from .domain import Category
from .store_schema import PALETTE, ModelVersion, ProjectError, now



class CategoryTable:
    """Project's category methods."""

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


class ModelTable:
    """Project's model-version methods: one is active at a time."""

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
