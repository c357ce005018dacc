"""The bundles a server holds, by name: loading them in the background (the server answers
`/health` with 503 until they are all in), and choosing the one a request's `model` names.

A name is the bundle folder's name unless given (`NAME=PATH` on the command line, or a dict key);
a model object already loaded (`mmedge.load(...)`) can be served as it is.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mmedge.errors import MMEdgeError
from mmedge.serve.errors import ApiError
from mmedge.serve.runner import Runner

__all__ = ["Registry", "Served", "served_names"]

log = logging.getLogger("mmedge.serve")


@dataclass
class Served:
    name: str
    source: Any                    # a bundle path, or a model already loaded
    model: Any = None              # the loaded Model / ClipModel
    error: str | None = None       # why loading failed
    runner: Runner | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def kind(self) -> str | None:
        """"chat" (a (vision-)language model) or "embeddings" (CLIP/SigLIP); None until loaded."""
        if self.model is None:
            return None
        return "embeddings" if self.model.bundle.family == "clip" else "chat"

    def describe(self) -> dict[str, Any]:
        about: dict[str, Any] = {"ready": self.model is not None, "kind": self.kind}
        if self.error:
            about["error"] = self.error
        if self.model is not None:
            info = self.model.info()
            about.update(family=info["family"], device=info["device"],
                         quantization=info.get("quantization", {}),
                         accepts_images=info.get("accepts_images", True))
            if "context_length" in info:
                about["context_length"] = info["context_length"]
            if "embed_dim" in info:
                about["embed_dim"] = info["embed_dim"]
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "mmedge",
                "mmedge": about}


def served_names(models: Mapping[str, Any] | Sequence[Any]) -> dict[str, Any]:
    """{name: bundle path or model}: a mapping as given, or names from the bundle folders."""
    if isinstance(models, Mapping):
        named = dict(models)
    else:
        named = {}
        for source in models:
            name = _name_of(source)
            if name in named:
                raise MMEdgeError(f"Two bundles would both be served as '{name}'; name them apart "
                                  f"with NAME=PATH (e.g. {name}-2={source}).")
            named[name] = source
    if not named:
        raise MMEdgeError("No bundles to serve; name at least one bundle folder.")
    for name in named:
        if not isinstance(name, str) or not name or any(c.isspace() or c == "/" for c in name):
            raise MMEdgeError(f"{name!r} cannot be a model name: use letters, digits, '-', '_' or '.'.")
    return named


def _name_of(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).resolve().name
    root = getattr(getattr(source, "bundle", None), "root", None)
    if root is None:
        raise MMEdgeError(f"Cannot serve a {type(source).__name__}: give a bundle folder or a model "
                          "from mmedge.load().")
    return Path(root).name


class Registry:
    def __init__(self, named: dict[str, Any], *, parallel: int, queue_size: int,
                 load: Callable[[Any], Any]):
        self.models = {name: Served(name, source) for name, source in named.items()}
        self._parallel, self._queue_size, self._load = parallel, queue_size, load
        self.loaded = threading.Event()          # set when every model is in (or failed)
        self.failed: list[str] = []

    @property
    def ready(self) -> bool:
        return self.loaded.is_set() and not self.failed

    def runners(self) -> dict[str, Runner]:
        return {name: s.runner for name, s in self.models.items() if s.runner is not None}

    def load_all(self, on_failure: Callable[[str], None] | None = None) -> None:
        """Load every bundle not yet loaded, one after the other (run in a thread)."""
        for served in self.models.values():
            try:
                model = served.source if not isinstance(served.source, (str, Path)) \
                    else self._load(served.source)
            except MMEdgeError as e:
                served.error = str(e)
            except Exception as e:   # noqa: BLE001 - reported on /health, the server goes on
                log.exception("loading %s failed", served.name)
                served.error = f"{type(e).__name__}: {e}"
            else:
                chat = model.bundle.family != "clip"
                served.runner = Runner(served.name, self._parallel if chat else 1, self._queue_size)
                served.model = model
                log.info("%s: ready (%s)", served.name, model.device.note)
            if served.error:
                log.error("%s: could not be loaded: %s", served.name, served.error)
                self.failed.append(served.name)
                if on_failure is not None:
                    on_failure(f"{served.name} ({served.source}): {served.error}")
        self.loaded.set()

    def pick(self, name: str | None, kind: str) -> Served:
        """The model a request names (any model of the right kind when it names none and there
        is one), or the ApiError to answer with."""
        if name is None:
            fitting = [s for s in self.models.values() if s.kind == kind]
            if len(fitting) == 1:
                return fitting[0]
            raise ApiError(400, f"`model` is required: one of {self._listing()}.", param="model")
        served = self.models.get(name)
        if served is None:
            raise ApiError(404, f"The model '{name}' does not exist on this server; it serves "
                                f"{self._listing()} (GET /v1/models).", param="model",
                           code="model_not_found")
        if served.error:
            raise ApiError(503, f"The model '{name}' could not be loaded: {served.error}",
                           param="model", code="model_unavailable")
        if served.model is None:
            raise ApiError(503, f"The model '{name}' is still loading; retry in a few seconds "
                                "(GET /health says when every model is ready).", param="model",
                           code="model_loading", headers={"Retry-After": "5"})
        if served.kind != kind:
            others = [s.name for s in self.models.values() if s.kind == kind]
            what = {"chat": "chat completions", "embeddings": "embeddings"}[kind]
            raise ApiError(400, f"'{name}' is {'a CLIP/SigLIP embedding' if served.kind == 'embeddings' else 'a generative'} "
                                f"model and does not give {what}"
                                + (f"; use {', '.join(others)}." if others else "."),
                           param="model", code="wrong_model_kind")
        return served

    def _listing(self) -> str:
        return ", ".join(f"'{name}'" for name in self.models)

    def close(self) -> None:
        for runner in self.runners().values():
            runner.close()
