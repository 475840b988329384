"""Atomic file writes: a reader never sees a half-written output, even after SIGKILL."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# Read once: os.umask can only be read by setting it, which is not safe while a writer
# thread creates files.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    The temporary file lives in the same folder (so the rename is atomic on POSIX) and keeps
    the target's suffixes (so writers that choose a format from the name, such as nibabel's
    ``.nii.gz``, still do). On any exception it is removed and ``target`` is untouched.
    """
    target = Path(target)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (umask applied).
        temporary.chmod(0o666 & ~_UMASK)
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(target: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` and move the result onto ``target`` atomically.

    Returns ``target`` as a ``Path``.
    """
    with atomic_path(target) as temporary:
        write(temporary)
    return Path(target)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return ``target`` as a ``Path``."""
    return write_atomic(target, lambda path: path.write_text(text, encoding="utf-8"))
