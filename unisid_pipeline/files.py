"""File-level helpers shared by the stores: disk-full detection, atomic writes, dead temp files.

Kept apart from `warehouse` (DuckDB) so that modules which only write files (UniSID checkpoints,
the LLM cache's error messages) import without duckdb, e.g. on a GPU image that lacks it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from unisid_pipeline.processes import pid_alive


class DiskFullError(OSError):
    """No room left to write under the project home; what was being replaced is still intact."""


_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded", "file too large")


def is_no_space(exc: BaseException) -> bool:
    """True for "disk full", "quota exceeded" and "file too large" errors (OSError errno or DuckDB's message)."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
        return True
    return any(t in str(exc).lower() for t in _NO_SPACE_TEXT)


def disk_full_error(path: Path, what: str, exc: BaseException) -> DiskFullError:
    """The error to raise when writing `what` to `path` ran out of space: where, how much is free, what to do."""
    try:
        free = f"{shutil.disk_usage(Path(path).parent).free / 1e6:,.1f} MB free there"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, f"disk full while writing {what} to {path} ({free}; {exc}). The previous "
                         "version is intact: free some space or point UNISID_HOME at a bigger disk, then re-run")


def remove_dead_temps(path: Path) -> list[Path]:
    """Delete `<name>.tmp<pid>` files beside `path` left by processes that were killed while writing them."""
    removed = []
    for tmp in Path(path).parent.glob(Path(path).name + ".tmp*"):
        pid = tmp.name[len(Path(path).name) + 4:]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def atomic_write_bytes(target: Path, data: bytes) -> None:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and is_no_space(exc):
            raise disk_full_error(target, "an object", exc) from exc
        raise
