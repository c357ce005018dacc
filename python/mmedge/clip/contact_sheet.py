"""A contact sheet of search hits: one PNG with the query and the top hits as captioned thumbnails
in a grid, written by `mmedge search ... --show hits.png`.

    write_contact_sheet("hits.png", index.search("a red door", k=8), query="a red door")

The first tile is the query (its text, or its image), then one tile per hit in rank order, each
captioned with rank, cosine and file name in Pillow's default font. A hit whose file is missing or
unreadable becomes a grey tile with its name: the sheet is still written. Tiles are TILE pixels
wide and TILE + CAPTION_HEIGHT high, COLUMNS to a row (fewer when there are fewer tiles).

Not here: the search (mmedge.clip.index).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from mmedge.errors import ImageError, MMEdgeError
from mmedge.vision.image import load_image

__all__ = ["write_contact_sheet", "sheet_size", "TILE", "CAPTION_HEIGHT", "COLUMNS"]

TILE = 192              # thumbnail box, pixels (the image is fit inside, aspect kept)
CAPTION_HEIGHT = 36     # two caption lines below each thumbnail
COLUMNS = 4             # tiles per row, the query's included
BACKGROUND = (255, 255, 255)
MISSING = (160, 160, 160)
QUERY_BACKGROUND = (230, 236, 245)
TEXT = (0, 0, 0)


def sheet_size(hits: int) -> tuple[int, int]:
    """(width, height) in pixels of the sheet for `hits` hits plus the query tile."""
    tiles = hits + 1
    columns = min(COLUMNS, tiles)
    rows = -(-tiles // columns)
    return columns * TILE, rows * (TILE + CAPTION_HEIGHT)


def write_contact_sheet(path: str | os.PathLike, hits: Sequence[tuple[str, float]],
                        query: Any) -> Path:
    """Write the sheet of `hits` ([(image path, cosine)], best first) for `query` (a text, or an
    image path / PIL image) to the PNG `path`; returns the path."""
    out = Path(path)
    if out.suffix.lower() != ".png":
        raise MMEdgeError(f"--show {out}: the contact sheet is a PNG; name it *.png.")
    font = ImageFont.load_default()
    sheet = Image.new("RGB", sheet_size(len(hits)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    columns = min(COLUMNS, len(hits) + 1)

    def origin(i: int) -> tuple[int, int]:
        return (i % columns) * TILE, (i // columns) * (TILE + CAPTION_HEIGHT)

    # The query: its image, or its words on a tinted tile.
    x, y = origin(0)
    if isinstance(query, str):
        draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), fill=QUERY_BACKGROUND)
        lines = textwrap.wrap(query, width=max(8, (TILE - 12) // _char_width(draw, font)))
        _text_lines(draw, font, (x + 6, y + 6), lines[:12], TILE - 12)
        caption = ["query (text)", ""]
    else:
        name = Path(query).name if isinstance(query, (str, os.PathLike)) else "image"
        _paste_thumbnail(sheet, draw, font, (x, y), query, name)
        caption = ["query (image)", name]
    _text_lines(draw, font, (x + 4, y + TILE + 3), caption, TILE - 8)

    for rank, (hit, score) in enumerate(hits, start=1):
        x, y = origin(rank)
        name = Path(hit).name
        _paste_thumbnail(sheet, draw, font, (x, y), hit, name)
        _text_lines(draw, font, (x + 4, y + TILE + 3), [f"#{rank}  {score:.4f}", name], TILE - 8)

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        sheet.save(out, format="PNG")
    except OSError as e:
        raise MMEdgeError(f"Cannot write the contact sheet {out}: {e.strerror or e}.") from None
    return out


def _paste_thumbnail(sheet: Image.Image, draw: ImageDraw.ImageDraw, font: Any,
                     xy: tuple[int, int], source: Any, name: str) -> None:
    """The image fit into the tile's thumbnail box, centred; a grey box with the name (and why)
    when it cannot be read."""
    x, y = xy
    try:
        # mmedge's own loader: its format allowlist, pixel limit and EXIF orientation.
        image = load_image(source)
        image = ImageOps.contain(image, (TILE - 8, TILE - 8))   # shrunk or enlarged to fit
        if min(image.size) < 1:   # a 1x20000 strip: at least one pixel across
            image = image.resize((max(1, image.width), max(1, image.height)))
    except (ImageError, OSError, ValueError, Image.DecompressionBombError):
        draw.rectangle((x + 4, y + 4, x + TILE - 5, y + TILE - 5), fill=MISSING)
        why = ("missing" if isinstance(source, (str, os.PathLike)) and not Path(source).exists()
               else "unreadable")
        lines = textwrap.wrap(name, width=max(8, (TILE - 16) // _char_width(draw, font)))
        _text_lines(draw, font, (x + 8, y + 8), [why, *lines[:8]], TILE - 16)
        return
    sheet.paste(image, (x + (TILE - image.width) // 2, y + (TILE - image.height) // 2))


def _char_width(draw: ImageDraw.ImageDraw, font: Any) -> int:
    return max(1, round(draw.textlength("abcdefghij", font=font) / 10))


def _text_lines(draw: ImageDraw.ImageDraw, font: Any, xy: tuple[int, int], lines: list[str],
                width: int) -> None:
    """Draw `lines` from `xy` down, each cut with an ellipsis to fit `width` pixels."""
    x, y = xy
    bbox = font.getbbox("Ag")
    step = bbox[3] - bbox[1] + 4
    for line in lines:
        if draw.textlength(line, font=font) > width:
            while line and draw.textlength(line + "...", font=font) > width:
                line = line[:-1]
            line += "..."
        draw.text((x, y), line, fill=TEXT, font=font)
        y += step
