"""The same-host mode of the sync lane: images and answers handed over in shared memory.

Where the API and every worker of a deployment share a tmpfs directory (DETSERVE_SHM_DIR; `detserve
up` makes one), each API thread owns a *port* there: a slot file its image is rewritten into and
a Unix datagram socket its answer comes back on. The frame, still queued through Redis, carries
only the port's name and the image's size, on a lane of that directory's own; the worker reads the
image from the slot and sends the answer to the socket (an answer too big for one datagram is
written into the slot, whose image is no longer wanted, and the datagram says so). This saves the
image's two trips through Redis and the answer's hop through it.

The directory carries a random id (its lane's name), so an API and a worker that share a path but
not the directory never pair up. A port's owner holds a lock on its slot while it lives; workers
remove the ports whose lock is free (their process died).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import time
from pathlib import Path

ID_FILE = ".detserve-shm-id"
SLOT, SOCK = ".slot", ".sock"
DATAGRAM_BYTES = 128 * 1024  # answers up to this size travel in the datagram itself
IN_SLOT = b"\0slot:"  # a datagram saying the answer waits in the slot: IN_SLOT + its size


def open_dir(path: str | Path) -> tuple[Path, str]:
    """The shared directory (made 0700 when missing) and its id.

    Raises:
        PermissionError: a directory that is not ours alone (another owner, or others may write).
    """
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"{directory} must belong to this user and not be writable by "
                              "others (chmod 700); refusing to hand images over through it")
    id_path = directory / ID_FILE
    try:
        fd = os.open(id_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process is writing it this instant
            if text := id_path.read_text().strip():
                return directory, text
            time.sleep(0.01)
        raise RuntimeError(f"{id_path} stays empty; remove it") from None
    value = secrets.token_hex(8)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return directory, value


def port_path(directory: Path, port: str, suffix: str) -> Path:
    """A port's file; ValueError for a name that is not a port's (it comes from a frame)."""
    if not port.isalnum():
        raise ValueError(f"{port!r} is not a port name")
    return directory / (port + suffix)


def sweep(directory: Path, older_than: float) -> int:
    """Remove the ports of dead processes (their slot's lock is free); returns how many."""
    removed, cutoff = 0, time.time() - older_than
    for slot in directory.glob("*" + SLOT):
        with contextlib.suppress(OSError):
            if slot.stat().st_mtime >= cutoff:
                continue
            fd = os.open(slot, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner lives
            finally:
                os.close(fd)
            slot.with_suffix(SOCK).unlink(missing_ok=True)
            slot.unlink()
            removed += 1
    return removed


def write_all(fd: int, data: bytes) -> None:
    """Write `data` at the start of the file."""
    view, offset = memoryview(data), 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)
