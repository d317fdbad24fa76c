"""What every part of the project store shares: the schema and its migrations, the records it
returns besides the domain's, the error it raises, and who and when an edit is stamped with."""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import LoupeError

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
