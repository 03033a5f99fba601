"""Output folders: checked before any work, built beside the target and swapped in when complete.

Every command that writes a folder (``rtl``, ``plots``, ``prepare-enwik8``)
builds it in ``.<name>.tmp-<pid>`` next to ``--out`` and renames it over the
old one only when everything succeeded, so a failed command leaves the previous
folder exactly as it was. ``train`` writes its files atomically one by one and
checks its folder with :func:`check_out_dir` before building anything.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path


class OutputError(ValueError):
    """An output folder that cannot be written; the message names the path and the fix."""


def check_out_dir(path: str | Path, option: str = "--out") -> Path:
    """``path`` as a Path if it is or can become a folder, else :class:`OutputError` naming the file in the way."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path} is a file, not a folder; choose another {option} or move the file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{option} {path} lies under {parent}, which is a file; choose another {option}")
            if not os.access(parent, os.W_OK | os.X_OK) and not path.exists():
                raise OutputError(f"{option} {path}: cannot create it, {parent} is not writable; choose another {option}")
            break
    return path


def check_replaceable(path: str | Path, marker: str, option: str = "--out") -> Path:
    """``path`` may be replaced whole: it is absent, empty, or holds ``marker`` (an earlier output of ours)."""
    path = check_out_dir(path, option)
    if path.is_dir() and any(path.iterdir()) and not (path / marker).exists():
        raise OutputError(f"{option} {path} is a folder with other files and no {marker}; ccflow replaces its "
                          f"output folder whole, so choose a new or empty {option}")
    return path


@contextmanager
def staged_dir(path: str | Path, marker: str, keep: tuple[str, ...] = (), option: str = "--out"):
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path``.

    ``path`` must pass :func:`check_replaceable` (``marker`` names a file every
    output of this kind holds). Entries named in ``keep`` (caches, results
    checked against the content) are moved from the old folder into the new one
    before the swap. On any exception the temporary folder is removed and
    ``path`` is untouched.
    """
    path = check_replaceable(path, marker, option)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for name in keep:
            if (path / name).exists() and not (tmp / name).exists():
                os.replace(path / name, tmp / name)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
