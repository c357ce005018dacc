"""Where an export writes: checking the `-o` folder, staging the bundle beside it, swapping it in.

What `--overwrite` may replace is decided here, before any work starts:
  - a missing folder, or an empty one, is always fine;
  - a folder mmedge wrote (its manifest.json carries the bundle format marker, and every file in it
    is one the manifest lists) is replaced with `--overwrite`, refused without it;
  - anything else (a working folder, a bundle someone added their own files to, a file) is refused
    with or without `--overwrite`, naming some of what is there: nothing a user made is deleted.

The new bundle is written into a hidden sibling folder (`.NAME.partial-*`, same file system) and
moved into place only when complete; an old bundle is renamed aside first and deleted last, so a
failed export, or one interrupted before the swap, leaves the old bundle as it was. Files and
folders get the modes the user's umask gives any new file (0644/0755 under umask 022), not the
private 0600/0700 that temporary folders and some writers (tempfile, onnxruntime-genai's builder)
use: a bundle is meant to be copied and read by other users (a service account, a robot).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from mmedge.bundle import MANIFEST_NAME
from mmedge.errors import ExportError

_SHOWN = 5   # entries named when refusing a folder
# Left behind only by an interrupted write_manifest: the bundle's own, not a user's.
_OWN_LEFTOVERS = {MANIFEST_NAME, MANIFEST_NAME + ".tmp"}


def check_target(out_dir: Path, overwrite: bool) -> Path:
    """Refuse an `-o` target that an export must not write to; return it as an absolute path."""
    out_dir = Path(os.path.abspath(out_dir.expanduser()))
    if out_dir.is_symlink() and out_dir.is_dir():
        out_dir = out_dir.resolve()   # replace the folder the link points to, keep the link
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file, not a folder. Pass -o a new folder (a bundle is "
                          f"a folder of several files), or move the file away first.")
    for parent in out_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise ExportError(f"Cannot create {out_dir}: {parent} is a file, not a folder.")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return out_dir
    is_bundle, strangers = foreign_entries(out_dir)
    if strangers:
        shown = ", ".join(strangers[:_SHOWN])
        if len(strangers) > _SHOWN:
            shown += f" and {len(strangers) - _SHOWN} more"
        what = ("is an mmedge bundle with other files added to it" if is_bundle
                else "is not an mmedge bundle")
        raise ExportError(f"{out_dir} is not empty and {what} (it holds {shown}). --overwrite "
                          f"only replaces a bundle that mmedge wrote, so none of your files are "
                          f"deleted: pass -o a new or empty folder, or move those files out "
                          f"first.")
    if not overwrite:
        raise ExportError(f"{out_dir} is not empty: it holds an mmedge bundle. Pass --overwrite "
                          f"to replace it, or choose another folder with -o.")
    cwd = Path.cwd().resolve()
    if cwd == out_dir or out_dir in cwd.parents:
        raise ExportError(f"{out_dir} is the current folder (or holds it); replacing it would "
                          f"leave your shell in a deleted folder. cd elsewhere and pass -o "
                          f"{out_dir}.")
    return out_dir


def foreign_entries(folder: Path) -> tuple[bool, list[str]]:
    """(whether `folder` holds an mmedge manifest, the entries in it mmedge did not write).

    Without a manifest every top-level entry is foreign; with one, every file the manifest does not
    list (folders end in /)."""
    manifest = _read_manifest(folder / MANIFEST_NAME)
    if manifest is None:
        return False, sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    listed = set(manifest["files"]) | _OWN_LEFTOVERS
    folders = {name.rsplit("/", i)[0] for name in listed for i in range(1, name.count("/") + 1)}
    foreign: list[str] = []
    for path in sorted(folder.rglob("*")):   # a folder sorts before what it holds
        name = path.relative_to(folder).as_posix()
        if any(name.startswith(f) for f in foreign if f.endswith("/")):
            continue                          # inside a foreign folder already named
        if path.is_dir() and not path.is_symlink():
            if name not in folders:
                foreign.append(name + "/")
        elif name not in listed:
            foreign.append(name)
    return True, foreign


def _read_manifest(path: Path) -> dict | None:
    """The parsed manifest if `path` is one mmedge wrote (its format marker and file list), else
    None. A newer format version still counts: it is mmedge's, and replacing it loses nothing."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict):
        return None
    version, files = manifest.get("format_version"), manifest.get("files")
    if not (isinstance(version, int) and version >= 1 and isinstance(files, dict)
            and isinstance(manifest.get("components"), dict)):
        return None
    return manifest


def make_staging(out_dir: Path) -> Path:
    """A new empty hidden folder beside `out_dir` (same file system, so the final move is a rename)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))


def follow_umask(root: Path) -> None:
    """Give every folder under `root` (itself included) and every file the mode a new one gets
    under the process's umask: 0755/0644 under umask 022. Symlinks are left alone."""
    umask = _current_umask()
    dir_mode, file_mode = 0o777 & ~umask, 0o666 & ~umask
    os.chmod(root, dir_mode)
    for path in root.rglob("*"):
        if path.is_symlink():
            continue
        os.chmod(path, dir_mode if path.is_dir() else file_mode)


def _current_umask() -> int:
    try:   # Linux reports it without changing it (os.umask would, briefly, for every thread)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def swap_in(staging: Path, out_dir: Path) -> None:
    """Move the finished bundle at `staging` to `out_dir`. An existing `out_dir` (empty, or a bundle
    check_target accepted) is renamed aside first and deleted only after the new one is in place;
    if the move fails the old one is put back."""
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    if not any(out_dir.iterdir()):
        # Keep the user's (empty) folder itself, its owner, mode and any shell standing in it.
        for entry in staging.iterdir():
            os.rename(entry, out_dir / entry.name)
        staging.rmdir()
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.rename(out_dir, aside / "bundle")
    try:
        os.rename(staging, out_dir)
    except BaseException:
        os.rename(aside / "bundle", out_dir)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)
