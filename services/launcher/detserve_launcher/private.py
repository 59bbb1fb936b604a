"""Files only this user may read: the data dir (images in Redis' files, models, logs, the database),
the secrets kept there, and the shared-memory directory of `detserve up`."""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
import sys
import tempfile
from pathlib import Path

from detserve.config import read_secret


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) 0700, or make an existing one of ours 0700.

    Raises:
        SystemExit: it exists but is not a directory of this user.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    problem = _not_ours(st)
    if problem:
        raise SystemExit(f"detserve: {path} {problem}; use a directory of your own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)  # one made by an older detserve, or by hand, with the default umask
    return path


def owned_private_dir(path: Path) -> Path:
    """Create `path` 0700, or accept an existing one only if it is ours and nobody else's.

    Unlike private_dir this never repairs: the directory lives in a place every user can write
    (/dev/shm) under a name anyone can predict, so one we did not make ourselves is refused.

    Raises:
        SystemExit: it is not ours, not a directory (a link, say), or group/world-accessible.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    problem = _not_ours(st) or (f"is accessible to other users (mode {stat.S_IMODE(st.st_mode):04o}, "
                                "expected 0700)" if st.st_mode & 0o077 else "")
    if problem:
        raise SystemExit(
            f"detserve: refusing the shared-memory directory {path}: it {problem}. Remove it if it "
            "is a stale one of yours, or set DETSERVE_SHM_DIR to a directory of your own (mode 0700)")
    return path


def _not_ours(st: os.stat_result) -> str:
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return "is not a directory (a link or a file)"
    if st.st_uid != os.geteuid():
        return f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    return ""


def kept_secret(path: Path, what: str) -> str:
    """The secret kept in `path`; a new random one when there is none.

    A blank file (a crash or a full disk between creating and writing it) never holds a secret: it
    is replaced, and stderr says so. The file is written whole under a temporary name and renamed,
    mode 0600, so no reader ever sees half of it; a lock on the directory makes two `detserve up`s
    starting at once agree on one secret.
    """
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        existing = read_secret(path)
        if existing:
            return existing
        blank = path.exists()
        secret = secrets.token_urlsafe(32)  # URL-safe: it also goes into redis:// URLs as it is
        write_private(path, secret)
    finally:
        os.close(fd)  # and the lock with it
    if blank:
        print(f"detserve: {path} was empty (interrupted while it was written?); "
              f"wrote a new {what} there", file=sys.stderr, flush=True)
    return secret


def write_private(path: Path, text: str) -> Path:
    """Replace `path` with `text` whole (a temporary file renamed over it), mode 0600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not land before the bytes do
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
