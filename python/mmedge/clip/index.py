"""An image search index on disk: CLIP/SigLIP embeddings of image files in one SQLite table, searched
by exact (brute-force) cosine similarity with numpy.

    index = ImageIndex("photos.sqlite", mmedge.load("clip/"))
    report = index.update(["photos/"])       # incremental: only new or changed files are embedded
    index.search("a red door", k=5)          # [(path, cosine), ...], best first

The table `images` holds, per file: absolute path, size, mtime (ns), sha256 of the bytes and the
float32 embedding. A re-index skips files whose size and mtime are unchanged, re-hashes the others
and embeds only those whose sha256 is new (a moved or touched file keeps its embedding), and drops
rows of files that disappeared under the folders being indexed. Every batch is committed as it
completes, so an interrupted run resumes where it stopped. Unreadable files are skipped and
reported. On a terminal a progress bar counts the files embedded (skipped ones in its postfix).
The `meta` table records which bundle made the embeddings (`ClipModel.model_id`, the
sha256 of its two graphs): an index is refused by any other bundle, quantized copies included,
since their embeddings live in a different space.

Brute force is exact and needs no extra dependency; it scans ~100k 512-dim embeddings in well under
a second on one core. Beyond millions of images use a vector database or an ANN library.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmedge.errors import ImageError, MMEdgeError

__all__ = ["ImageIndex", "IndexReport", "IMAGE_SUFFIXES", "image_files"]

SCHEMA_VERSION = 1
# What reading an index file someone handed over can raise: SQLite's errors, and a text column
# holding bytes that are not UTF-8 (sqlite3 decodes every TEXT value as it is fetched).
_READ_ERRORS = (sqlite3.Error, UnicodeDecodeError)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm",
                  ".avif", ".mpo")


def image_files(paths: Iterable[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Files named and image files (by suffix) inside folders, recursively and sorted; returns
    (images, skipped non-image files). Raises MMEdgeError for a path that does not exist."""
    files, skipped = [], []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                (files if f.suffix.lower() in IMAGE_SUFFIXES else skipped).append(f)
        elif path.is_file():
            (files if path.suffix.lower() in IMAGE_SUFFIXES else skipped).append(path)
        else:
            raise MMEdgeError(f"{name} does not exist.")
    return files, skipped


def progress_bar(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar on stderr counting files; drawn only when `enabled` and stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="file", disable=None if enabled else True,
                file=sys.stderr, dynamic_ncols=True)


@dataclass
class IndexReport:
    added: int = 0          # files embedded for the first time
    changed: int = 0        # files whose content changed: re-embedded
    unchanged: int = 0      # same size and mtime, or same sha256: not embedded again
    removed: int = 0        # rows dropped because their file is gone
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, why)


class ImageIndex:
    """A SQLite index of image embeddings made by one CLIP/SigLIP bundle; see the module doc."""

    def __init__(self, db_path: str | os.PathLike, model: Any):
        if getattr(getattr(model, "bundle", None), "family", None) != "clip":
            raise MMEdgeError("An image index needs a CLIP/SigLIP bundle (family 'clip').")
        self.path = Path(db_path)
        self.model = model
        try:
            self._db = sqlite3.connect(str(self.path))
        except _READ_ERRORS as e:
            raise MMEdgeError(f"{self.path} cannot be opened as an index ({e}).") from None
        try:
            self._check_schema()
            self._db.executescript(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                "CREATE TABLE IF NOT EXISTS images (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
                "mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, embedding BLOB NOT NULL);"
                "CREATE INDEX IF NOT EXISTS images_sha256 ON images (sha256);")
            meta = {str(k): str(v) for k, v in self._db.execute("SELECT key, value FROM meta")}
        except _READ_ERRORS as e:
            self._fail(e)
        except MMEdgeError:
            self._db.close()
            raise
        mine = {"schema": str(SCHEMA_VERSION), "model_id": model.model_id,
                "embed_dim": str(model.embed_dim)}
        if not meta:
            source = model.bundle.manifest.get("exporter", {}).get("source") or ""
            try:
                with self._db:
                    self._db.executemany("INSERT INTO meta VALUES (?, ?)",
                                         [*mine.items(), ("source", source)])
            except _READ_ERRORS as e:
                self._fail(e)
        elif any(meta.get(k) != mine[k] for k in mine):
            self._db.close()
            raise MMEdgeError(
                f"{self.path} was built by another bundle (model {meta.get('model_id', '?')[:12]}, "
                f"from {meta.get('source') or 'unknown'}, schema {meta.get('schema', '?')[:8]}, "
                f"{meta.get('embed_dim', '?')[:8]}-dim embeddings); this bundle is "
                f"{mine['model_id'][:12]}. Embeddings of different models cannot be compared: use "
                f"another index file, or the bundle that built this one.")

    # What an index file may hold: these tables and index, nothing else. A view or trigger in a file
    # someone handed over would run its own SQL inside every query (a recursive view never ends).
    _SCHEMA = {("table", "meta"), ("table", "images"), ("index", "images_sha256"),
               ("index", "sqlite_autoindex_meta_1"), ("index", "sqlite_autoindex_images_1"),
               ("table", "sqlite_stat1"), ("table", "sqlite_stat4")}   # the last two: ANALYZE

    def _check_schema(self) -> None:
        self._db.execute("PRAGMA trusted_schema = OFF")
        found = set(self._db.execute("SELECT type, name FROM sqlite_master"))
        strange = sorted(found - self._SCHEMA)
        if strange:
            kind, name = strange[0]
            raise MMEdgeError(
                f"{self.path} is not an mmedge index: it holds a {kind} named {name!r} "
                f"({len(strange)} object(s) an index does not have). Refusing to run its SQL; "
                "index into a new file (`mmedge index CLIP_BUNDLE NEW.sqlite FOLDERS`).")
        columns = {"meta": ["key", "value"],
                   "images": ["path", "size", "mtime_ns", "sha256", "embedding"]}
        for table, want in columns.items():
            if ("table", table) in found:
                have = [row[1] for row in self._db.execute(f"PRAGMA table_info({table})")]
                if have != want:
                    raise MMEdgeError(
                        f"{self.path} is not an mmedge index: its table {table!r} has columns "
                        f"{have}, not {want}. Index into a new file.")

    def _fail(self, error: Exception) -> None:
        self._db.close()
        raise MMEdgeError(f"{self.path} is not an mmedge index, or is damaged ({error}). Index "
                          "into a new file, or delete this one and re-run `mmedge index`.") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ImageIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        try:
            return self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        except _READ_ERRORS as e:
            raise MMEdgeError(f"{self.path} cannot be read ({e}); it is damaged. Delete it and "
                              "re-run `mmedge index`.") from None

    # -- indexing ---------------------------------------------------------------------------------
    def update(self, paths: Sequence[str | os.PathLike], batch_size: int = 8,
               progress: bool | Callable[[int, int], None] = True) -> IndexReport:
        """Index the image files named or found in folders under `paths`; see the module doc.
        `progress`: True draws a progress bar on stderr (files embedded / to embed, skipped files
        in the postfix) when stderr is a terminal; False draws none; a callable is called as
        `progress(done, total)` after every batch instead."""
        files, not_images = image_files(paths)
        report = IndexReport(skipped=[(str(p), "not an image file") for p in not_images])
        files = [p.resolve() for p in files]
        todo: list[tuple[str, int, int, str, bool]] = []   # (path, size, mtime_ns, sha256, is new)
        touched = []
        for path in files:
            row = self._db.execute("SELECT size, mtime_ns, sha256 FROM images WHERE path = ?",
                                   (str(path),)).fetchone()
            try:
                stat = path.stat()
                if row and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
                    report.unchanged += 1
                    continue
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as e:
                report.skipped.append((str(path), f"cannot be read: {e.strerror or e}"))
                continue
            if row and row[2] == digest:      # touched or copied back: same bytes, same embedding
                touched.append((stat.st_size, stat.st_mtime_ns, str(path)))
                report.unchanged += 1
            else:
                todo.append((str(path), stat.st_size, stat.st_mtime_ns, digest, row is None))
        with self._db:
            self._db.executemany("UPDATE images SET size = ?, mtime_ns = ? WHERE path = ?", touched)

        with progress_bar(progress is True, len(todo), "index") as bar:
            bar.set_postfix(skipped=len(report.skipped), refresh=False)
            self._embed_new(todo, batch_size, report, bar,
                            progress if callable(progress) else None)
        report.removed = self._prune(paths)
        return report

    def _embed_new(self, todo: list[tuple[str, int, int, str, bool]], batch_size: int,
                   report: IndexReport, bar: Any,
                   progress: Callable[[int, int], None] | None) -> None:
        """Embed and store the files of `todo`, one committed transaction per batch."""
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            digests = sorted({b[3] for b in batch})
            known = dict(self._db.execute(   # an identical file indexed elsewhere: reuse it
                f"SELECT sha256, embedding FROM images WHERE sha256 IN ({','.join('?' * len(digests))})",
                digests))
            fresh = {b[3]: b[0] for b in batch if b[3] not in known}   # one file per new content
            for digest, embedding in zip(fresh, self._embed(list(fresh.values()), report)):
                if embedding is not None:
                    known[digest] = embedding.astype(np.float32).tobytes()
            rows = [(path, size, mtime, digest, known[digest])
                    for path, size, mtime, digest, _ in batch if digest in known]
            with self._db:     # one transaction per batch: an interrupted run resumes here
                self._db.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?)", rows)
            for path, _, _, digest, is_new in batch:
                if digest in known:
                    if is_new:
                        report.added += 1
                    else:
                        report.changed += 1
                elif fresh.get(digest) != path:   # a duplicate of an unreadable file
                    report.skipped.append((path, "same content as an unreadable file"))
            bar.update(len(batch))
            bar.set_postfix(skipped=len(report.skipped), refresh=False)
            if progress:
                progress(min(start + batch_size, len(todo)), len(todo))

    def _embed(self, paths: list[str], report: IndexReport) -> list[np.ndarray | None]:
        """Embeddings of `paths`; None (and a line in the report) for files that cannot be read."""
        if not paths:
            return []
        try:
            return list(self.model.embed_images(paths, batch_size=len(paths)))
        except ImageError:
            out: list[np.ndarray | None] = []
            for path in paths:   # find the unreadable ones, keep the rest
                try:
                    out.append(self.model.embed_images([path])[0])
                except ImageError as e:
                    report.skipped.append((path, str(e)))
                    out.append(None)
            return out

    def _prune(self, paths: Sequence[str | os.PathLike]) -> int:
        """Drop rows of files that no longer exist under the indexed folders or names."""
        roots = [Path(p).resolve() for p in paths]
        gone = []
        for (path,) in self._db.execute("SELECT path FROM images"):
            p = Path(path)
            if any(p == r or r in p.parents for r in roots) and not p.is_file():
                gone.append((path,))
        with self._db:
            self._db.executemany("DELETE FROM images WHERE path = ?", gone)
        return len(gone)

    # -- searching --------------------------------------------------------------------------------
    def search(self, query: Any, k: int = 10) -> list[tuple[str, float]]:
        """The `k` indexed images most similar to `query` (a text, or an image: PIL image, array,
        or a path given as pathlib.Path), as [(path, cosine)], best first. Exact cosine search.
        Warns (UnknownWordsWarning) when the text is mostly words the tokenizer does not know."""
        if k < 1:
            raise MMEdgeError(f"k must be at least 1, got {k}.")
        if isinstance(query, str):
            if not query.strip():
                raise MMEdgeError("The search text is empty.")
            vector = self.model.embed_texts([query], warn_unknown=True)[0]   # unknown words: warns
        else:
            vector = self.model.embed_images([query])[0]
        try:
            rows = self._db.execute("SELECT path, embedding FROM images").fetchall()
        except _READ_ERRORS as e:
            raise MMEdgeError(f"{self.path} cannot be read ({e}); it is damaged. Delete it and "
                              "re-run `mmedge index`.") from None
        if not rows:
            return []
        width = 4 * int(self.model.embed_dim)
        for path, embedding in rows:   # the file may come from anywhere: every row is checked
            if not isinstance(path, str) or not isinstance(embedding, bytes) or len(embedding) != width:
                got = f"{len(embedding)} bytes" if isinstance(embedding, bytes) else type(embedding).__name__
                raise MMEdgeError(
                    f"{self.path} has a damaged row: path {path!r:.80} with an embedding of {got}, "
                    f"where this bundle's are {width} bytes ({self.model.embed_dim} float32). "
                    "Delete the index and re-run `mmedge index`.")
        paths = [r[0] for r in rows]
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        scores = matrix @ vector.astype(np.float32)
        k = min(k, len(rows))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        return [(paths[i], float(scores[i])) for i in top]
