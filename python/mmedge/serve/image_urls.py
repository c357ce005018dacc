"""Images as API requests carry them, turned into what `mmedge.load(...)` models take.

Accepted: a `data:` URL (`data:image/jpeg;base64,...`, the form OpenAI's clients send for a local
image) and, only when the server was started with `--allow-path DIR`, a local file under one of
those folders (`file:///...` or a bare path). Remote URLs (http, https, anything else) are refused
and never fetched: a device server that fetches what a request names is a way into its network.
Decoding (and the pixel limit) is the runtime's `load_image`; this module only gets the bytes.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import unquote, urlparse

from mmedge.serve.errors import ApiError

__all__ = ["image_bytes", "url_of_part"]

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)"
                       r"(?P<base64>;base64)?,", re.IGNORECASE)
_STANDARD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URL_SAFE = re.compile(r"[A-Za-z0-9_-]*={0,2}")


def url_of_part(part: dict[str, Any], param: str) -> str:
    """The URL string of an `image_url` content part: `{"image_url": {"url": ...}}` as OpenAI
    defines it, or the bare string form `{"image_url": "..."}` some clients send."""
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    if not isinstance(value, str) or not value:
        raise ApiError(400, 'An image_url part needs {"image_url": {"url": "data:image/...;base64,..."}}.',
                       param=param, code="invalid_image_url")
    return value


def image_bytes(url: str, allowed: Sequence[Path], param: str) -> bytes | Path:
    """The encoded image behind `url`: its bytes (data URL) or its path (allowed local file)."""
    if url[:5].lower() == "data:":
        return _from_data_url(url, param)
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https", "ftp", "ws", "wss") or (scheme and scheme != "file" and len(scheme) > 1):
        raise ApiError(400, f"Remote image URLs are not fetched by this server ({scheme}://...). "
                            "Send the image itself as a data URL: data:image/jpeg;base64,<the "
                            "file's bytes in base64>.", param=param, code="remote_url_refused")
    path = Path(unquote(urlparse(url).path) if scheme == "file" else url)
    if not allowed:
        raise ApiError(400, "Local file paths are off on this server; send the image as a data URL "
                            "(or start the server with --allow-path DIR).", param=param,
                       code="local_path_refused")
    resolved = Path(os.path.realpath(path))
    if not any(resolved.is_relative_to(folder) for folder in allowed):
        raise ApiError(403, f"{path} is outside the folders this server may read "
                            f"(--allow-path); send the image as a data URL instead.", param=param,
                       code="local_path_refused")
    if not resolved.is_file():
        raise ApiError(400, f"No image file at {path}.", param=param, code="invalid_image_url")
    return resolved


def _from_data_url(url: str, param: str) -> bytes:
    match = _DATA_URL.match(url)
    if match is None or not match.group("base64"):
        raise ApiError(400, "An image data URL must look like data:image/png;base64,<base64 bytes>.",
                       param=param, code="invalid_image_url")
    mime = (match.group("mime") or "").lower()
    if mime and not mime.startswith("image/") and mime != "application/octet-stream":
        raise ApiError(400, f"The data URL says {mime!r}, not an image; send image/jpeg, image/png "
                            "or image/webp.", param=param, code="invalid_image")
    payload = re.sub(r"\s+", "", url[match.end():])   # some clients wrap base64 at 76 columns
    padded = payload + "=" * (-len(payload) % 4)           # and some drop the padding
    try:
        if _STANDARD.fullmatch(payload):
            data = base64.b64decode(padded, validate=True)
        elif _URL_SAFE.fullmatch(payload):
            data = base64.urlsafe_b64decode(padded)
        else:
            raise ValueError("not base64")
    except (binascii.Error, ValueError):
        raise ApiError(400, "The image data URL is not valid base64.", param=param,
                       code="invalid_image") from None
    if not data:
        raise ApiError(400, "The image data URL holds no bytes.", param=param, code="invalid_image")
    return data
