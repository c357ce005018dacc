"""Index files from elsewhere: `ImageIndex` opening, counting and searching a SQLite file it did not
write answers or raises MMEdgeError naming the file, and never runs the file's own SQL (views,
triggers). Each case below was an exception of another kind, a hang, or a wrong answer before
(several found by tests/fuzz/fuzz_index.py). Uses the real mmedge-tiny-clip bundle, exported once."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

pytest.importorskip("torch")

import mmedge  # noqa: E402
from mmedge.clip.index import ImageIndex  # noqa: E402
from mmedge.errors import MMEdgeError  # noqa: E402

import _harness  # noqa: E402


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return mmedge.load(_harness.tiny_clip_bundle(tmp_path_factory.mktemp("clip-work")))


@pytest.fixture()
def real_index(clip, tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    path = tmp_path / "photos.sqlite"
    with ImageIndex(path, clip) as index:
        report = index.update([photos], progress=False)
    assert report.added == 3
    return path


def _sql(path, *statements, params=()):
    db = sqlite3.connect(str(path))
    for statement in statements:
        db.execute(statement, params) if params else db.execute(statement)
    db.commit()
    db.close()


def test_a_real_index_still_opens_and_searches(real_index, clip):
    with ImageIndex(real_index, clip) as index:
        assert len(index) == 3
        hits = index.search("a red door", k=2)
    assert len(hits) == 2 and all(p.endswith(".png") for p, _ in hits)


def test_text_that_is_not_utf8_is_a_damaged_index(real_index, clip):
    _sql(real_index, "UPDATE meta SET value = CAST(x'e0ff' AS TEXT) WHERE key = 'source'")
    with pytest.raises(MMEdgeError, match="(?i)photos.sqlite is not an mmedge index, or is damaged "
                                          "\\(.*utf-8"):
        ImageIndex(real_index, clip)


def test_a_recursive_view_is_refused_without_running_it(clip, tmp_path):
    path = tmp_path / "view.sqlite"
    _sql(path, "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
         "CREATE VIEW images AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
         "SELECT 'p' AS path, x AS embedding FROM c")
    with pytest.raises(MMEdgeError, match="view.sqlite is not an mmedge index: it holds a view "
                                          "named 'images'"):
        ImageIndex(path, clip)


def test_a_trigger_is_refused(real_index, clip):
    _sql(real_index, "CREATE TRIGGER wipe AFTER INSERT ON images BEGIN DELETE FROM meta; END")
    with pytest.raises(MMEdgeError, match="holds a trigger named 'wipe'.*Refusing to run its SQL"):
        ImageIndex(real_index, clip)


def test_other_columns_are_refused(clip, tmp_path):
    path = tmp_path / "columns.sqlite"
    _sql(path, "CREATE TABLE images (path, embedding)")
    with pytest.raises(MMEdgeError, match="table 'images' has columns \\['path', 'embedding'\\]"):
        ImageIndex(path, clip)


def test_a_row_with_a_short_embedding_is_named(real_index, clip):
    """It was a ValueError from numpy's reshape in search."""
    _sql(real_index, "UPDATE images SET embedding = x'00000000' WHERE rowid = 1")
    with ImageIndex(real_index, clip) as index:
        with pytest.raises(MMEdgeError, match="damaged row: path '.*png' with an embedding of 4 "
                                              "bytes, where this bundle's are"):
            index.search("a red door")


def test_a_row_whose_embedding_is_text_is_named(real_index, clip):
    _sql(real_index, "UPDATE images SET embedding = 'hello' WHERE rowid = 2")
    with ImageIndex(real_index, clip) as index:
        with pytest.raises(MMEdgeError, match="damaged row: .* embedding of str"):
            index.search("a red door")


def test_meta_values_of_other_types_and_dimensions(real_index, clip):
    """An integer model_id was a TypeError (`[:12]` on an int); a different embed_dim was accepted."""
    _sql(real_index, "UPDATE meta SET value = 12345 WHERE key = 'model_id'")
    with pytest.raises(MMEdgeError, match="built by another bundle \\(model 12345"):
        ImageIndex(real_index, clip)
    _sql(real_index, "UPDATE meta SET value = ? WHERE key = 'model_id'", params=(clip.model_id,))
    _sql(real_index, "UPDATE meta SET value = '7' WHERE key = 'embed_dim'")
    with pytest.raises(MMEdgeError, match="7-dim embeddings"):
        ImageIndex(real_index, clip)


def test_bytes_that_are_not_sqlite(clip, tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 8)
    with pytest.raises(MMEdgeError, match="junk.sqlite is not an mmedge index, or is damaged"):
        ImageIndex(path, clip)


# The index file fuzz_index.py found (raw mode, zlib-compressed here): a sqlite_master entry whose
# text is not UTF-8, read while checking the schema. sqlite3 raised UnicodeDecodeError.
SCHEMA_NOT_UTF8 = (
    "eNrt2mlsFFUcAPCZTrsthe1YtdbVYKdIAwVh59id2W3nbWlx5XBtoRRpa7TOtd2RPUp3SxUhpmoBEQE1KogaWy0aTdQE"
    "RA3zxiOoFO8LFRMtgqgBVLwxgu5260GiUaMf1Px/yZt3zXvzXubT+88Q8+aGzJTBhBOdMSXFCMQJBEkS0xiGIIi8dHIQ"
    "v6DSKfdXdZL4Y3nEVI100t8SeUXNBH05/VLRJro+XQQAAAAAAAAA8D8RynOUTnCR7WZcNy41Y0q7kWxLRhTeK2YrjumN"
    "wdqmIDOr/uxgM3PcDUxD/UjD0MRsS2VPBZVf6nKRV1akFDVqZHuz19yRiZpq60LBkXHMxA4lFWGags1NzJzGWefVNrYw"
    "5wZbzmKS5hIj/cim4IxgI1Pf0MTUzw+FzmJiKTNmtMWTv9E1sqThqX5pNWKqoetmvJ2pCzXU/dxROTnXUVrjIonhXScX"
    "RdNH6zalK5UYrreN7JLL5nmNZH5pSQnZkz+8p5iRUjIp57j9ZFqYiQuNy35jM4uVaJdx/MoqJ+Q4SqtLfm8BmdnauMw1"
    "c5YvyLwnZ+ZQTycJ+kt6E31TugAAAAAAAAAAAIB/ApNLuaqTia5OzYjFDL3dqMpmU1Jm/LIpWtTsoCmq7KThGEObbsY4"
    "3hfKyR3b44wldCPaZuqqoqhe3hAESVLDiiiJksRJXp7luDAviKzi5QXW41d8rKQKqiIIguGTRNWviJqqefycVkhSLjqp"
    "RYyYwhUOn/9fJuh36I/pr9MFAAAAAAAAAAAA/OsVUi4yG1vIdVJl5M9BBGoMNZb8KYCQM4pyjcoGADLf/6mCbsK5rPC7"
    "dAYAAAAAAAAA4PdN34+/3/wKHkdtQxsPXCQ3vzcHbxhw28adTvzAo3ehhP8HdLTma+v1+HqLOTYTPzWpVX7z7SL75AGn"
    "3WvfWl185n14T9Jhr4ifjhJ3lAe++vA5ufJk0X617XqcWrdVfvbhMlQ2e3Rg8HAOqo845Be6e9HSijIc2VmMPp1wLbpo"
    "6VjcS5AFZo6jx7lyjLs70bnQ3Z2aEkkkU2bUcKtdZlR3h7uWLHEP/wU+pSOSSCWSbnZqR7w9/+JTD9UoH+zLr2MVwc/r"
    "XpbleU4N84omKj5RkFhVVA1FEiWB8/GiLug86/OxrMophibxkiAprF+TwrraV+4IrG6MYGLjQzJx+B5r/LpT7b7CtWg7"
    "MxktWjsjUPWRB20fOoq/mTwHn7g4aP2w5mY0ekdhIDRNtle2LLAOjH6/atmFB6oi7a/I/sAqNNDbiMvj+XavVmTTV83D"
    "ivmYfP/iYitIXIxr+k6x+8evwMtTu/C7nzyMW5lXUXRwC5q9bBeasX0FWvL+i9ZLM2U8WDqED5bP37b7USzL+y/Bh8f1"
    "o6NbV+MPmX585Jt6eVZdrPoSvAAPflqKG7bMRbcIEpp0Tj2+/ME1Vuueiaiyv1Ye7ByS7y4uCRS4nrEainpw2bPXor03"
    "rZLHBW/FZeunBQ4dW4pax1wTKAvtQo/XTsP8G4vkfU8cRI26YC/fMxvPatmPr956Q3VRR18V/fy9aGDzBtQ/1WnfZ62z"
    "ph/da200tyDrsQrU/gWLr+o7MbBaGLCY3fMDwfE6cn+3Dz15bwLtyN+L2OtOq06VyNZ7Dy6Vu1TZ9uBj1m1P3Wg9/cyd"
    "qHOgF28oLsKbFxYEDq6aJJ/hdsq7PpLs1xaU4yNF3Ui9gwyIb+RXh8i16LMLl8s7b5+J8+rusdavabWph1bjhZ/fjTt3"
    "9ONzP+lF5w/sRJtOoLZFV82zJ1V8gKUZk9EhnkBD1/ehuXMfQVTyDLT5it2o5kgLfqthk3zBFXdZcbkZZX4koOgIQb9I"
    "b0xnAAAAAAAAAAAA+Bt4yiT/dIyHz8R4qL80hMsMyeEoc9RfiyRlz/9ugt5Gd6UzAAAA4L8jmNvjJDVN4fxS2C+qoiZK"
    "Pl1iRU5VdY/CiQrv87Me3iv5eNUQedHPezxhzidIuteneUWV8yk6Sw3P4vFLfoGXFEkMe8SwIbGGJKkc7/WyguiVBM3j"
    "0ThvukswDIH1Sl6/GNZExat4OU2TOL+Qc3Z6llF/96vMj0Dhk/o="
)


def test_a_schema_whose_text_is_not_utf8(clip, tmp_path):
    import base64
    import zlib

    path = tmp_path / "found.sqlite"
    path.write_bytes(zlib.decompress(base64.b64decode(SCHEMA_NOT_UTF8))[1:])   # [0]: harness byte
    with pytest.raises(MMEdgeError, match="found.sqlite is not an mmedge index, or is damaged "
                                          "\\('utf-8' codec can't decode"):
        ImageIndex(path, clip)
