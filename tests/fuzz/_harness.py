"""What every fuzz harness in tests/fuzz/ shares: the rule for what counts as a finding, a way to
turn fuzz bytes into JSON-like values, the tiny real bundles the harnesses feed, and `main`, which
runs a harness under atheris (coverage-guided, libFuzzer's engine) or writes its seed corpus.

A harness is a module with `setup(work: Path)` (build what it needs, once), `seeds()` (a few real
inputs to start from) and `one_input(data: bytes)`. `one_input` may raise mmedge's own errors
(`MMEdgeError` and subclasses: a clear message for bad input); anything else escaping it, a crash
of the process, a hang past libFuzzer's -timeout or memory past its -rss_limit_mb is a finding.

    python tests/fuzz/fuzz_image.py DIR -runs=100000     # fuzz (libFuzzer's flags after DIR;
                                                         # seeds DIR first when it is empty)
    python tests/fuzz/fuzz_image.py --seeds DIR          # only write the seed corpus

`scripts/fuzz.sh` does both for every harness. tests/fuzz/test_fuzz_harnesses.py runs each
harness's seeds and every input a past run found through `one_input` in plain pytest (no atheris).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
# A harness's `work` folder: where it builds its bundles, reused across runs (scripts/fuzz.sh sets it).
WORK = Path(os.environ.get("MMEDGE_FUZZ_WORK", ROOT / "build" / "fuzz"))


def allowed(exc: BaseException) -> bool:
    """mmedge's own errors are the answer to bad input; anything else is a finding."""
    from mmedge.errors import MMEdgeError

    return isinstance(exc, MMEdgeError)


def guarded(one_input: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """`one_input` with mmedge's errors swallowed, so that only findings escape."""

    def run(data: bytes) -> None:
        try:
            one_input(data)
        except Exception as exc:   # noqa: BLE001 - the point: sort every exception
            if not allowed(exc):
                raise

    return run


# -- fuzz bytes -> values ----------------------------------------------------------------------------
class Bytes:
    """A cursor over fuzz bytes that hands out small decisions; past the end everything is 0/empty,
    so every input is valid and short inputs mean simple values (what a fuzzer mutates best)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def int(self, n: int) -> int:
        """0 <= value < n."""
        return (self.byte() | self.byte() << 8) % n if n > 256 else self.byte() % n

    def bool(self) -> bool:
        return bool(self.byte() & 1)

    def text(self, max_len: int = 24) -> str:
        n = self.int(max_len + 1)
        raw = bytes(self.byte() for _ in range(n))
        return raw.decode("utf-8", errors="replace")

    def rest(self) -> bytes:
        out, self.pos = self.data[self.pos:], len(self.data)
        return out

    def choice(self, options: list[Any]) -> Any:
        return options[self.int(len(options))]


INTERESTING_NUMBERS = [0, 1, -1, 2, 3, 8, 16, 32, 2**31 - 1, 2**31, -(2**31), 2**63, 10**9, 0.5,
                       -0.0, 1e308, float("inf"), float("-inf"), float("nan"), True, False]


def json_value(b: Bytes, depth: int = 0, words: list[str] | None = None) -> Any:
    """A JSON-like value (None, bool, number, string, list, dict), nested up to 4 deep."""
    kind = b.int(8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return b.choice(INTERESTING_NUMBERS)
    if kind == 2:
        return b.int(70000) - 1000
    if kind in (3, 4):
        return b.choice(words) if words and b.bool() else b.text()
    if kind == 5:
        return [json_value(b, depth + 1, words) for _ in range(b.int(4))]
    keys = words or ["type", "text", "role", "content", "name"]
    return {(b.choice(keys) if b.bool() else b.text(8)): json_value(b, depth + 1, words)
            for _ in range(b.int(4))}


# -- real tiny bundles -------------------------------------------------------------------------------
def _cached(work: Path, name: str, build: Callable[[Path], None]) -> Path:
    """work/name, built by `build(path)` unless a complete, verified copy is already there."""
    from mmedge.bundle import open_bundle
    from mmedge.errors import BundleError

    target = work / name
    try:
        open_bundle(target, verify=True)
        return target
    except BundleError:
        shutil.rmtree(target, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    build(tmp)
    tmp.rename(target)
    return target


def tiny_llava_bundle(work: Path) -> Path:
    """A tiny LLaVA bundle (CLIP tower, Llama decoder, SmolLM2's tokenizer), as the tests make it."""

    def build(out: Path) -> None:
        from mmedge.export import export_model
        from mmedge.models.tiny import build_tiny_llava

        folder = build_tiny_llava(out.parent / "hf-llava", vision="clip", text="llama", seed=2)
        export_model(str(folder), out, precision="fp32", progress=False)
        shutil.rmtree(out.parent / "hf-llava", ignore_errors=True)

    return _cached(work, "llava", build)


def tiny_clip_bundle(work: Path) -> Path:
    """mmedge-tiny-clip (the reference CLIP trained here, committed weights), exported."""

    def build(out: Path) -> None:
        from mmedge.export import export_model

        export_model("mmedge-tiny-clip", out, progress=False)

    return _cached(work, "clip", build)


def linked_copy(bundle: Path, target: Path) -> Path:
    """A bundle folder whose files are hard links to `bundle`'s (instant, and links inside the
    folder, which open_bundle accepts); only its manifest.json is its own, to be rewritten."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for f in bundle.iterdir():
        if f.name == "manifest.json":
            shutil.copy(f, target / f.name)
        else:
            try:
                os.link(f, target / f.name)
            except OSError:   # another file system: copy
                shutil.copy(f, target / f.name)
    return target


# -- running -----------------------------------------------------------------------------------------
def write_seeds(folder: Path, seeds: list[bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (folder / hashlib.sha1(seed).hexdigest()).write_bytes(seed)


def main(module: Any) -> None:
    """Runs the harness under atheris with sys.argv (libFuzzer's: corpus folders, then -flags),
    after writing the module's seeds into the first corpus folder when it is empty; with
    `--seeds DIR`, only writes the seeds."""
    module.setup(WORK)
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(Path(sys.argv[2]), module.seeds())
        return
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None and (not corpus.is_dir() or not any(corpus.iterdir())):
        write_seeds(corpus, module.seeds())
    import atheris

    atheris.Setup(sys.argv, guarded(module.one_input))
    atheris.Fuzz()


def instrumented(active: bool, *also: str) -> Any:
    """A context in which mmedge's modules (and the packages `also`), imported inside it, are
    instrumented for coverage
    (`active`: the harness runs as a script under atheris); a no-op otherwise, so that pytest
    imports the harnesses without atheris."""
    import contextlib

    if active and "--seeds" not in sys.argv:
        import atheris

        return atheris.instrument_imports(include=["mmedge", *also])
    return contextlib.nullcontext()


def dump(value: Any) -> bytes:
    return json.dumps(value).encode()
