"""All-or-nothing output folders: files are written to a staging folder and moved into place only when complete.

A reused folder never mixes two exports: every file an earlier export wrote is moved aside before the new ones
move in, and put back if anything fails, so `out_dir` holds either the old export or the new one, never a part.
A non-empty folder that is not an otov3 export is refused unless the caller passes ``overwrite=True`` (its other
files are then kept).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from otov3.errors import ExportError

# Every file an export may write; the summary marks the folder as an otov3 export.
EXPORT_FILES = ("state_dict.pt", "subnet.py", "subnet.onnx", "subnet.onnx.data", "summary.json")
MARKER = "otov3_export"


def is_export(folder: Path) -> bool:
    """Whether `folder` holds an earlier otov3 export (its summary.json carries the marker, or the older keys)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and (MARKER in summary or {"removed_groups", "files"} <= summary.keys())


def check_target(out_dir: Path, *, overwrite: bool) -> None:
    """Refuses a target that is a file, or a non-empty folder that is not an export (unless `overwrite`).

    Raises:
        ExportError: naming the path and what to do.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"out_dir '{out_dir}' exists and is not a folder; choose another path.", path=out_dir)
    if out_dir.is_dir() and not overwrite and any(out_dir.iterdir()) and not is_export(out_dir):
        found = sorted(p.name for p in out_dir.iterdir())[:5]
        raise ExportError(
            f"out_dir '{out_dir}' is not empty and holds no earlier otov3 export (found {found}); choose an empty "
            "folder, or pass overwrite=True to write the sub-network's files into it (other files are kept).",
            path=out_dir,
        )


@contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside `out_dir` (inside it when its parent is read-only), removed on exit."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.otov3-partial-", dir=out_dir.parent))
    except OSError as err:
        if not out_dir.is_dir():
            raise ExportError(f"Cannot create a folder beside '{out_dir}': {err}", path=out_dir) from err
        try:
            tmp = Path(tempfile.mkdtemp(prefix=".otov3-partial-", dir=out_dir))
        except OSError as err2:
            raise ExportError(f"Cannot write into '{out_dir}': {err2}", path=out_dir) from err2
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def commit(tmp: Path, out_dir: Path) -> None:
    """Moves every file of `tmp` into `out_dir`, replacing the earlier export's files; all or nothing.

    Raises:
        ExportError: a move failed; `out_dir` is as it was before.
    """
    if not out_dir.exists():
        try:
            os.replace(tmp, out_dir)  # one rename: atomic
            return
        except OSError as err:
            raise ExportError(f"Cannot create '{out_dir}': {err}", path=out_dir) from err
    backup = Path(tempfile.mkdtemp(prefix=".otov3-previous-", dir=tmp))
    old: list[str] = []
    new: list[str] = []
    try:
        for name in EXPORT_FILES:
            if (out_dir / name).exists():
                os.replace(out_dir / name, backup / name)
                old.append(name)
        for f in sorted(p for p in tmp.iterdir() if p != backup):
            os.replace(f, out_dir / f.name)
            new.append(f.name)
    except BaseException as err:  # an interrupt too: roll back, the new files out and the old ones in
        for name in new:
            _try_replace(out_dir / name, tmp / name)
        for name in old:
            _try_replace(backup / name, out_dir / name)
        if isinstance(err, OSError):
            raise ExportError(f"Cannot move the sub-network's files into '{out_dir}': {err}", path=out_dir) from err
        raise


def _try_replace(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError:
        pass
