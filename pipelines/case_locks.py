"""Per-case locks in the output folder, so concurrent ``medseg predict`` runs share the work.

A case is claimed by an exclusive ``flock`` on ``.<output name>.lock`` beside its output.
The kernel drops the lock when its owner exits, however it dies, so a later run takes
over a case whose owner was killed; a live owner's case is skipped by the others.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


class CaseLock:
    """A held lock on one output; ``release`` removes the lock file and frees the case."""

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._descriptor: int | None = descriptor

    def release(self) -> None:
        """Give the case up (idempotent). The file goes first, while still locked, so a
        run that opened it meanwhile notices the change of file and opens it again."""
        if self._descriptor is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._descriptor)
        self._descriptor = None


def lock_path(target: Path) -> Path:
    """The lock file of output ``target``."""
    return target.with_name(f".{target.name}.lock")


def try_lock(target: Path) -> CaseLock | None:
    """Claim output ``target`` for this process: the lock, or None while another live
    process holds it. Raises ``OSError`` when the lock file cannot be created."""
    path = lock_path(target)
    while True:
        # O_NOFOLLOW: a symbolic link planted under the lock's name is never followed.
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        except OSError as error:
            if error.errno not in _UNSUPPORTED:
                os.close(descriptor)
                raise
            # A file system without locks (some network mounts): work on uncoordinated,
            # as before locks existed, rather than fail every case.
            logger.warning("%s: file locks unsupported here; concurrent runs may repeat work", path)
            return CaseLock(path, descriptor)
        try:
            current = path.lstat()
        except FileNotFoundError:
            current = None
        if current is not None and current.st_ino == os.fstat(descriptor).st_ino:
            return CaseLock(path, descriptor)
        # The previous owner removed this file after we opened it: lock the new one.
        os.close(descriptor)
