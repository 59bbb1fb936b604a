"""Handing sync predictions between an API and a worker on the same machine through shared memory
(DETSERVE_SHM_DIR), the trade Triton's system-shared-memory protocol makes for co-located clients.

Each API thread owns a *port* in the shared directory: a slot file its images are written into
(overwritten in place: a new file per image cost a third of a millisecond of page allocation on
our 2-core machines, a rewrite a twentieth) and a Unix datagram socket its answers come back on
(one wake-up where the answer through Redis costs two). The lane frame, still queued through
Redis, carries only the port's name and the image's size. An answer too big for one datagram
goes as a file whose name the datagram carries.

It is safe to configure anywhere: the directory carries a random id, workers advertise the id they
see, and the API uses its ports only on a lane whose id matches its own, so an API and a worker
that merely share a path name, not the directory, never try. A port's owner holds a lock on its
slot while it lives; the workers' sweep removes ports whose lock is free (their process died).
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import socket
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from detserve.errors import InvalidImage

ID_FILE = ".detserve-shm-id"
SLOT = ".slot"  # a port's image slot
SOCK = ".sock"  # a port's answer socket
FILE = ".img"  # one-off files: answers too big for a datagram
SLOT_FDS = 64  # slot descriptors a worker keeps open (_slot_fd)
SLOT_KEEP_BYTES = 4 * 1024 * 1024  # a slot grown past this by a huge image is shrunk after use
DATAGRAM_BYTES = 128 * 1024  # answers up to this size travel in the datagram itself
FILE_MARK = b"\0file:"  # a datagram whose answer waits in a one-off file


class Handoff:
    """One shared directory: ports for the API's threads, images and answers for the workers."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.id = self._read_or_create_id()
        self._sender: socket.socket | None = None
        self._slots: OrderedDict[str, int] = OrderedDict()  # port -> its slot's descriptor
        self._slots_lock = threading.Lock()

    def _read_or_create_id(self) -> str:
        path = self.dir / ID_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            for _ in range(50):  # another process is writing it this instant
                text = path.read_text().strip()
                if text:
                    return text
                time.sleep(0.01)
            raise RuntimeError(f"{path} stays empty; remove it") from None
        value = secrets.token_hex(8)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        return value

    # the API's side

    def open_port(self) -> Port:
        """A new port for the calling thread. Raises OSError where the directory cannot hold one
        (full, or its path too long for a Unix socket name)."""
        return Port(self)

    # the worker's side

    def read_image(self, port: str, size: int) -> bytes:
        """The `size` bytes of image waiting in `port`'s slot.

        Raises:
            InvalidImage: no such port, or less in its slot than the frame says.
        """
        with self._slots_lock:  # held while reading: an evicted descriptor is never read
            try:
                fd = self._slot_fd(port)
                stat = os.fstat(fd)
                if stat.st_nlink == 0:  # its port has closed since we opened it
                    self._forget_slot(port)
                    raise FileNotFoundError(port)
                # never more than the slot holds: the frame's size is not to be trusted blindly
                data = os.pread(fd, min(size, stat.st_size), 0)
            except OSError as exc:
                raise InvalidImage("the image handed over in shared memory is gone; send it "
                                   "again") from exc
        if len(data) < size:
            raise InvalidImage(f"the image handed over in shared memory is shorter than {size} "
                               "bytes; send it again")
        return data

    def _slot_fd(self, port: str) -> int:
        """An open descriptor of the port's slot. Opening a file is twice the cost of reading a
        300 KB image from it on our 2-core machines, and an API thread keeps its port for
        life, so descriptors are kept (the last SLOT_FDS ports used)."""
        fd = self._slots.get(port)
        if fd is not None:
            self._slots.move_to_end(port)
            return fd
        fd = os.open(self._path(port, SLOT), os.O_RDONLY)
        self._slots[port] = fd
        if len(self._slots) > SLOT_FDS:
            self._forget_slot(next(iter(self._slots)))
        return fd

    def _forget_slot(self, port: str) -> None:
        fd = self._slots.pop(port, None)
        if fd is not None:
            os.close(fd)

    def send_answer(self, port: str, answer_id: str, data: bytes) -> bool:
        """Send an answer to the thread waiting on `port`; False when that port is gone."""
        head = answer_id.encode() + b"\n"
        if len(data) > DATAGRAM_BYTES:
            data = FILE_MARK + self.put(data).encode()
        if self._sender is None:  # one unbound socket per handoff: sendto is thread-safe
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sender.sendto(head + data, str(self._path(port, SOCK)))
        except OSError as exc:
            if (file := _file_of(data)) is not None:
                self.discard(file)
            if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
                return False  # its thread or process has gone: nobody waits
            raise
        return True

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        with self._slots_lock:
            for port in list(self._slots):
                self._forget_slot(port)

    # one-off files

    def put(self, data: bytes) -> str:
        """Write a one-off file; returns the name it is taken by."""
        name = uuid.uuid4().hex + FILE
        fd = os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        except BaseException:
            os.close(fd)
            self.discard(name)
            raise
        os.close(fd)
        return name

    def take(self, name: str) -> bytes:
        """A one-off file's bytes, removed from the directory.

        Raises:
            InvalidImage: no such file (already taken, swept, or a name from elsewhere).
        """
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                data = os.read(fd, os.fstat(fd).st_size)  # one read, no buffered file object
            finally:
                os.close(fd)
        except OSError as exc:
            raise InvalidImage("the data handed over in shared memory is gone; send it "
                               "again") from exc
        self.discard(name)
        return data

    def discard(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except (OSError, InvalidImage):
            pass

    def sweep(self, older_than: float) -> int:
        """Remove what dead processes left: ports nobody holds, one-off files older than
        `older_than` s, sockets without a slot. Returns how many files went. Also closes the
        descriptors kept of slots whose port has closed, so their memory is freed."""
        with self._slots_lock:
            for port, fd in list(self._slots.items()):
                if os.fstat(fd).st_nlink == 0:
                    self._forget_slot(port)
        cutoff, removed = time.time() - older_than, 0
        for path in self.dir.iterdir():
            try:
                if path.name.startswith(".") or path.stat().st_mtime >= cutoff:
                    continue
                if path.suffix == SLOT and _unheld(path):
                    path.with_suffix(SOCK).unlink(missing_ok=True)
                    path.unlink()
                    removed += 1
                elif path.suffix == FILE or (path.suffix == SOCK and
                                             not path.with_suffix(SLOT).exists()):
                    path.unlink()
                    removed += 1
            except OSError:
                pass  # taken or removed meanwhile
        return removed

    def _path(self, name: str, suffix: str = "") -> Path:
        full = name + suffix
        if "/" in full or "\\" in full or full.startswith(".") or \
                not full.endswith((FILE, SLOT, SOCK)):
            raise InvalidImage(f"{name!r} is not a name handed over in shared memory")
        return self.dir / full


class Port:
    """An API thread's slot and answer socket. Not thread-safe: one per thread."""

    def __init__(self, handoff: Handoff) -> None:
        self.handoff = handoff
        self.name = secrets.token_hex(8)
        slot = handoff.dir / (self.name + SLOT)
        self._fd = os.open(slot, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while we live
            self._sock.bind(str(slot.with_suffix(SOCK)))
        except OSError:
            self.close()
            raise
        self._buf = bytearray(DATAGRAM_BYTES + 4096)
        self._size = 0

    def write(self, image: bytes) -> int:
        """Put the image in the slot (the previous one is no longer wanted); returns its size."""
        if self._size > SLOT_KEEP_BYTES:
            os.ftruncate(self._fd, 0)  # a huge image does not keep its memory
        _write_all(self._fd, image)
        self._size = len(image)
        return self._size

    def receive(self, answer_id: str, timeout: float) -> bytes | None:
        """The answer for `answer_id`, or None after `timeout` s. Answers to earlier calls that
        gave up waiting are thrown away."""
        wanted = answer_id.encode()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                n = self._sock.recv_into(self._buf)
            except TimeoutError:
                return None
            got, _, payload = bytes(memoryview(self._buf)[:n]).partition(b"\n")
            file = _file_of(payload)
            if got == wanted:
                return payload if file is None else self.handoff.take(file)
            if file is not None:  # a late answer's file must not stay behind
                self.handoff.discard(file)
        return None

    def close(self) -> None:
        """Remove the port's files (the worker answering a late call finds it gone)."""
        slot = self.handoff.dir / (self.name + SLOT)
        for path in (slot.with_suffix(SOCK), slot):
            path.unlink(missing_ok=True)
        self._sock.close()
        os.close(self._fd)


def _unheld(slot: Path) -> bool:
    """True when no process holds the slot's lock: its port's owner is gone."""
    fd = os.open(slot, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return True


def _file_of(payload: bytes) -> str | None:
    """The one-off file an answer datagram points to; None when it carries the answer itself."""
    return payload[len(FILE_MARK):].decode() if payload.startswith(FILE_MARK) else None


def _write_all(fd: int, data: bytes) -> None:
    """Write `data` at the start of the file (a new one, or a slot rewritten in place)."""
    view, offset = memoryview(data), 0
    while offset < len(view):
        offset += os.pwrite(fd, view[offset:], offset)
