"""Atomic file writes: a reader never sees a half-written output, even after SIGKILL."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from medseg.errors import ConfigError


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# Read once: os.umask can only be read by setting it, which is not safe while a writer
# thread creates files.
_UMASK = _read_umask()


def apply_default_mode(path: str | os.PathLike[str]) -> None:
    """Give ``path`` the mode a plain ``open()`` (file) or ``mkdir`` (folder) would have
    under the process umask: ``mkstemp`` and ``mkdtemp`` create 0600 and 0700, which
    colleagues and a container's other users cannot read."""
    full = 0o777 if Path(path).is_dir() else 0o666
    Path(path).chmod(full & ~_UMASK)


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
        apply_default_mode(temporary)
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


def _temporary_pattern(target: Path) -> re.Pattern[str]:
    # Exactly the names ``atomic_path`` gives ``target``'s temporaries (mkstemp adds 8
    # characters of [a-z0-9_]); a name is matched literally, never as a glob, so a target
    # called ``*.nii.gz`` cannot select other files.
    suffix = "".join(target.suffixes) or ".tmp"
    return re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}{re.escape(suffix)}")


def remove_stale_temporaries(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files a killed writer left beside ``target``; return them.

    Only call this while owning ``target`` (its case lock): a live writer's temporary has
    the same form.
    """
    target = Path(target)
    pattern = _temporary_pattern(target)
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(target.parent):
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


def is_within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``folder`` or lies below it, symbolic links resolved."""
    resolved, base = Path(path).resolve(), Path(folder).resolve()
    return resolved == base or base in resolved.parents


def require_outside(
    output: str | os.PathLike[str], protected: Iterable[str | os.PathLike[str]], option: str
) -> None:
    """Refuse (``ConfigError``) an ``output`` folder equal to or inside any ``protected``
    folder (inputs, dataset roots, folders a layout reads); ``option`` names the argument
    to change in the message."""
    for folder in protected:
        if is_within(output, folder):
            where = (
                "is an input folder"
                if Path(output).resolve() == Path(folder).resolve()
                else f"is inside the input folder {folder}"
            )
            raise ConfigError(
                f"{output}: {where}, whose files could be overwritten; choose another {option}"
            )


def require_regular_file(path: str | os.PathLike[str]) -> None:
    """Raise ``ConfigError`` unless ``path`` is a regular file (after symbolic links): a
    named pipe under a file's name would block a reader forever. A missing file raises
    ``FileNotFoundError``, for the caller to name."""
    mode = Path(path).stat().st_mode
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path}: not a regular file (a pipe, socket, device or folder)")


def read_regular_text(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of the regular file ``path`` (see ``require_regular_file``)."""
    require_regular_file(path)
    return Path(path).read_text(encoding="utf-8")


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
