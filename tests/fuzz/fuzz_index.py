"""Fuzz harness: an untrusted image index file through `mmedge.clip.index.ImageIndex` (the read
side: opening it, `len`, `search`), with the real mmedge-tiny-clip bundle as the model.

Half the inputs are the raw bytes of the SQLite file (the seeds are real indexes that
`ImageIndex.update` wrote, which libFuzzer mutates as bytes); the other half build a database
with SQL chosen by the bytes: the real schema or a variation of it (missing or extra columns, a
view or a trigger in place of a table), meta rows with right or wrong values, image rows whose
paths and embeddings have fuzzed types and lengths. Opening, counting and searching must answer
or raise MMEdgeError; they must never crash or hang (libFuzzer's -timeout).
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

import numpy as np

from _harness import Bytes, instrumented, main, tiny_clip_bundle

with instrumented(__name__ == "__main__"):
    import mmedge
    from mmedge.clip.index import ImageIndex

STATE: dict[str, Any] = {}
COLUMNS = "path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, " \
          "sha256 TEXT NOT NULL, embedding BLOB NOT NULL"
HOSTILE_SQL = [
    "CREATE VIEW v AS SELECT 1",
    "CREATE TRIGGER t AFTER INSERT ON images BEGIN DELETE FROM meta; END",
    "CREATE TABLE extra (x)",
    "CREATE INDEX i2 ON images (size)",
    "ANALYZE",
    "PRAGMA user_version = 7",
    "PRAGMA journal_mode = WAL",
]


def setup(work: Path) -> None:
    if STATE:
        return
    model = mmedge.load(tiny_clip_bundle(work))
    STATE["model"] = model
    STATE["db"] = work / "index-target.sqlite"
    photos = work / "index-photos"
    photos.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    real = work / "index-real.sqlite"
    real.unlink(missing_ok=True)
    with ImageIndex(real, model) as index:
        index.update([photos], progress=False)
    STATE["real"] = real.read_bytes()
    STATE["meta"] = {"schema": "1", "model_id": model.model_id, "embed_dim": str(model.embed_dim)}


def seeds() -> list[bytes]:
    real = STATE["real"]
    return [b"\x00" + real, b"\x00" + real[:1024], b"\x00", b"\x01\x00\x00\x03",
            b"\x01\x01\x02\x05\x07", b"\x01\x00\x01\x01\x04\x02\x08"]


def _value(b: Bytes, good: Any) -> Any:
    kind = b.int(8)
    return [good, good, good, None, b.int(1 << 16), b.text(12), b.text(4).encode(), 1.5][kind]


def _build(path: Path, b: Bytes) -> None:
    db = sqlite3.connect(str(path))
    try:
        shape = b.int(4)
        if shape == 0:       # the real schema
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(f"CREATE TABLE images ({COLUMNS})")
        elif shape == 1:     # typeless and missing columns
            db.execute("CREATE TABLE meta (key, value)")
            db.execute("CREATE TABLE images (path, embedding)")
        elif shape == 2:     # a view where a table should be (recursive: never ends if run)
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("CREATE VIEW images AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
                       "FROM c) SELECT 'p' AS path, 0 AS size, 0 AS mtime_ns, '' AS sha256, "
                       "x AS embedding FROM c")
        else:                # nothing: ImageIndex creates it
            pass
        if shape in (0, 1):
            for key, good in STATE["meta"].items():
                if b.int(4):
                    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, _value(b, good)))
            dim = STATE["model"].embed_dim
            for i in range(b.int(5)):
                length = b.choice([dim, dim, dim - 1, dim + 1, 0, 1])
                embedding = np.full(length, b.choice([0.5, -1.0, np.nan, np.inf, 0.0]), np.float32).tobytes()
                row = {"path": _value(b, f"/photos/{i}.png"),
                       "embedding": _value(b, embedding) if b.int(4) else embedding[:b.int(9)]}
                if shape == 0:
                    db.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?)",
                               (row["path"], 1, 2, "ab", row["embedding"]))
                else:
                    db.execute("INSERT INTO images VALUES (?, ?)", (row["path"], row["embedding"]))
        for _ in range(b.int(3)):
            try:
                db.execute(b.choice(HOSTILE_SQL))
            except sqlite3.Error:
                pass
        db.commit()
    except sqlite3.Error:
        pass   # a construction the schema does not allow: test what was built
    finally:
        db.close()


def one_input(data: bytes) -> None:
    b = Bytes(data)
    path: Path = STATE["db"]
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    if b.byte() & 1:
        _build(path, b)
    else:
        path.write_bytes(b.rest())
    with ImageIndex(path, STATE["model"]) as index:   # MMEdgeError: allowed
        count = len(index)
        hits = index.search("a red door", k=1 + b.int(8))
        if len(hits) > min(count, 8) or not all(isinstance(p, str) for p, _ in hits):
            raise AssertionError(f"search gave {hits!r:.200} from {count} rows")


if __name__ == "__main__":
    main(sys.modules[__name__])
