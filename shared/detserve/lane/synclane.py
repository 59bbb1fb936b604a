"""The sync prediction lane: a waiting caller's image goes to a worker over one Redis list.

A synchronous prediction is only worth something to the caller waiting for it, so Celery's per-task
machinery buys it nothing: late acks and redelivery (the caller has timed out long before), a
result-backend entry (the answer goes straight back) or the pool hand-off. On our 2-core machines
that machinery cost about 2 ms per prediction, and keeping the image under a key of its own another
SET and GETDEL. Here the API pushes one frame (a JSON header, a newline, the image's raw bytes) onto
the flavor's lane with one LPUSH; each worker process runs lane threads that BRPOP it, run the same
ModelHost the Celery tasks use, and push the answer (replies.py) to the caller's reply list. A frame
that waited past the caller's deadline is dropped unanswered.

Where the API and a worker share a shared-memory directory (handoff.py), the frame goes on a lane of
that directory's own and carries only the name of the API thread's port: the worker reads the
image from the port's slot and sends the answer to the port's socket, so the answer comes back in
one wake-up instead of two through Redis. Redis does not acknowledge that LPUSH (silent_push), so
nothing but the answer wakes the API thread: on a machine whose idle cores sleep, each wake-up
costs a fifth of a millisecond.

Asynchronous predictions, deploys and stops stay Celery tasks: they need task ids, stored results,
retries and Flower.
"""

from __future__ import annotations

import atexit
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis

from detserve.errors import InvalidImage
from detserve.lane import replies
from detserve.lane.handoff import Handoff, Port
from detserve.monitoring import logs

log = logging.getLogger("detserve.lane.synclane")

KEY = "detserve:lane:{flavor}"  # frames carrying their image; any worker of the flavor takes them
LOCAL_KEY = "detserve:lane:{flavor}:{shm_id}"  # frames whose image waits in that shared memory
LOCAL_LANES = "detserve:lanes:{flavor}"  # shm ids with a worker taking frames: id -> last seen
FORMAT = 2
IDLE_POLL_SECONDS = 1.0  # how often an idle lane thread looks at its stop flag
ADVERTISE_SECONDS = 2.0
SWEEP_SECONDS = 60.0
ORPHAN_SECONDS = 600.0  # what a dead process left in shared memory is removed after this long
PORT_RETRY_SECONDS = 10.0  # a thread that could not open a port tries again after this long
LANE_KEEP_SECONDS = 60  # a lane no worker takes from vanishes this long after its last caller gave up
FOLLOW_DELAY_SECONDS = 0.002  # a thread called in to listen waits this long first (_take_turn)


@dataclass(frozen=True)
class Frame:
    version_id: int
    service_id: str
    reply_to: str  # the Redis list the answer goes on (with a port: the answer's id)
    deadline: float  # epoch seconds: after this nobody waits for the answer
    image: bytes = b""
    port: str | None = None  # set: the image waits in that port's slot, the answer goes there
    image_size: int = 0  # with a port: how many bytes of its slot are the image
    request_id: str = ""  # the API's X-Request-Id, for the worker's log lines


def encode(frame: Frame) -> bytes:
    header = {"format": FORMAT, "version_id": frame.version_id, "service_id": frame.service_id,
              "reply_to": frame.reply_to, "deadline": frame.deadline, "port": frame.port,
              "image_size": frame.image_size, "request_id": frame.request_id}
    # json.dumps escapes control characters, so the first newline ends the header
    return json.dumps(header).encode() + b"\n" + frame.image


def decode(data: bytes) -> Frame:
    """Raises ValueError for anything that is not a frame of this format."""
    head, sep, image = data.partition(b"\n")
    if not sep:
        raise ValueError("no header")
    header = json.loads(head)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"unknown frame format {header!r:.80}")
    port = header.get("port")
    return Frame(int(header["version_id"]), str(header["service_id"]), str(header["reply_to"]),
                 float(header["deadline"]), image, None if port is None else str(port),
                 int(header.get("image_size") or 0), str(header.get("request_id") or ""))


class LaneClient:
    """The API's side: queue a frame on the flavor's lane, through shared memory where it can."""

    def __init__(self, client: redis.Redis, handoff: Handoff | None) -> None:
        self.client, self.handoff = client, handoff
        self._local: dict[str, tuple[float, bool]] = {}  # flavor -> (checked at, a worker shares)
        self._thread = threading.local()  # each thread's port and Redis connection
        self._ports: list[Port] = []
        self._lock = threading.Lock()
        if handoff is not None:
            atexit.register(self.close)

    def call(self, flavor: str, version_id: int, service_id: str, image: bytes,
             timeout: float) -> replies.Answer | None:
        """Queue the image's frame and wait for the worker's answer; None after `timeout` s."""
        reply_to = replies.new_key()
        deadline = time.time() + timeout
        rid = logs.REQUEST.get() or ""
        port = self._port(flavor)
        if port is not None:
            try:
                size = port.write(image)
            except OSError as exc:  # the tmpfs is full: this one goes the long way
                log.warning("shared memory handoff failed (%s); sending through Redis", exc)
            else:
                frame = Frame(version_id, service_id, reply_to, deadline, port=port.name,
                              image_size=size, request_id=rid)
                key = LOCAL_KEY.format(flavor=flavor, shm_id=port.handoff.id)
                return self._through_port(port, key, frame, timeout)
        return self._through_redis(KEY.format(flavor=flavor),
                                   Frame(version_id, service_id, reply_to, deadline, image,
                                         request_id=rid),
                                   timeout)

    def _through_redis(self, key: str, frame: Frame, timeout: float) -> replies.Answer | None:
        """One round trip: LPUSH, EXPIREAT and the BLPOP on the reply list go in one pipeline
        (Redis runs them in order, so the frame is queued before the wait starts)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.lpush(key, encode(frame))
        pipe.expireat(key, int(frame.deadline) + LANE_KEEP_SECONDS)
        pipe.blpop([frame.reply_to], timeout=timeout)
        item = pipe.execute()[-1]
        return None if item is None else replies.decode(item[1])

    def _through_port(self, port: Port, key: str, frame: Frame,
                      timeout: float) -> replies.Answer | None:
        self._connection().send_packed_command([silent_push(
            key.encode(), encode(frame), int(frame.deadline) + LANE_KEEP_SECONDS)],
            check_health=False)
        data = port.receive(frame.reply_to, timeout)
        return None if data is None else replies.decode(data)

    def _connection(self) -> Any:
        """This thread's own Redis connection, which never has a reply to read (silent_push)."""
        conn = getattr(self._thread, "conn", None)
        if conn is None:
            pool = self.client.connection_pool
            conn = self._thread.conn = pool.connection_class(**pool.connection_kwargs)
        return conn

    def _port(self, flavor: str) -> Port | None:
        """This thread's port, while a worker of the flavor shares our memory; else None."""
        if self.handoff is None or not self._worker_shares_memory(flavor):
            return None
        port: Port | None = getattr(self._thread, "port", None)
        if port is None and time.monotonic() >= getattr(self._thread, "retry_at", 0.0):
            try:
                port = self._thread.port = self.handoff.open_port()
            except OSError as exc:  # full, or a directory path too long for a socket name
                self._thread.retry_at = time.monotonic() + PORT_RETRY_SECONDS
                log.warning("no shared-memory port in %s (%s); sync predictions go through "
                            "Redis", self.handoff.dir, exc)
                return None
            with self._lock:
                self._ports.append(port)
        return port

    def _worker_shares_memory(self, flavor: str) -> bool:
        """True while a worker that sees our shared-memory directory advertises it (cached 1 s)."""
        assert self.handoff is not None
        now = time.monotonic()
        checked = self._local.get(flavor)
        if checked is None or now - checked[0] > 1.0:
            seen = self.client.zscore(LOCAL_LANES.format(flavor=flavor), self.handoff.id)
            checked = (now, seen is not None and time.time() - seen < 3 * ADVERTISE_SECONDS)
            self._local[flavor] = checked
        return checked[1]

    def close(self) -> None:
        """Remove this process's ports from the shared directory."""
        with self._lock:
            ports, self._ports = self._ports, []
        for port in ports:
            try:
                port.close()
            except OSError:
                pass


def silent_push(key: bytes, frame: bytes, expire_at: int) -> bytes:
    """LPUSH and EXPIREAT, each after CLIENT REPLY SKIP: Redis answers neither those nor the
    SKIPs, so the caller has nothing to read, and nothing wakes it but the answer on its port.
    (A push Redis refused would have been a timeout all the same: no worker ever answers it.)"""
    return b"".join([_SKIP_REPLY, _command(b"LPUSH", key, frame),
                     _SKIP_REPLY, _command(b"EXPIREAT", key, b"%d" % expire_at)])


def _command(*args: bytes) -> bytes:
    """One command in Redis' protocol (redis-py's packer costs several times this)."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


_SKIP_REPLY = _command(b"CLIENT", b"REPLY", b"SKIP")

Handler = Callable[[int, bytes], dict[str, Any]]


class LaneConsumer:
    """`threads` threads taking frames off a flavor's lanes and answering them with `handle`.

    `handle(version_id, image)` returns the contract's result, or raises: a DetserveError reaches
    the caller with its code and status, anything else as internal_error. With a Handoff, frames
    whose image waits in that shared memory come first.

    One idle thread listens at a time, and the thread that answered last takes the next frame:
    Redis hands a frame to the client that has waited longest, so threads listening side by side
    would take frames in turn, each with caches and memory cold from the other's last frame; on
    our 2-core machines that cost the demo detector 1.2 ms per prediction at concurrency 1. While
    the listener is busy with a frame another thread listens, so frames still run side by side;
    when the busy one finishes it takes the listening back (CLIENT UNBLOCK ends the other's BRPOP
    as if it had timed out: a frame is never taken from it).
    """

    def __init__(self, redis_url: str, flavor: str, handle: Handler, threads: int,
                 handoff: Handoff | None = None) -> None:
        self.redis_url, self.flavor, self.handle, self.handoff = redis_url, flavor, handle, handoff
        self.keys = [KEY.format(flavor=flavor)]
        if handoff is not None:
            self.keys.insert(0, LOCAL_KEY.format(flavor=flavor, shm_id=handoff.id))
        self._stop = threading.Event()
        self._turns = threading.Condition()
        self._listener: int | None = None  # the index of the thread in BRPOP (or about to be)
        self._client_ids: dict[int, int] = {}  # thread index -> its Redis connection's CLIENT ID
        self._just_answered: dict[int, bool] = {}  # thread index -> busy since it last listened
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"detserve-lane-{i}",
                                          daemon=True) for i in range(max(1, threads))]
        if handoff is not None:
            self._threads.append(threading.Thread(target=self._advertise, name="detserve-lane-ad",
                                                  daemon=True))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        log.info("taking sync predictions from %s", ", ".join(self.keys))

    def stop(self) -> None:
        """Take no more frames (frames being answered are finished)."""
        self._stop.set()

    def join(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` s for the threads to finish their frames."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self, me: int) -> None:
        client = redis.Redis.from_url(self.redis_url)  # one connection per thread: BRPOP blocks it
        answer: tuple[str, bytes] | None = None  # for a reply list: sent with the next BRPOP
        while not self._stop.is_set():
            try:
                if me not in self._client_ids:  # before any turn: a listener must be unblockable
                    self._client_ids[me] = int(client.client_id())
                listening, displaced = self._take_turn(me)
                if not listening:
                    continue  # woken to look at the stop flag
                pipe = client.pipeline(transaction=False)
                if answer is not None:
                    replies.add(pipe, *answer)
                if displaced is not None:
                    pipe.client_unblock(displaced)
                pipe.brpop(self.keys, timeout=IDLE_POLL_SECONDS)  # one round trip for all
                item = pipe.execute()[-1]
            except redis.RedisError as exc:
                log.warning("sync lane: Redis unavailable (%s); retrying", exc)
                self._client_ids.pop(me, None)  # a new connection gets a new id
                self._stop.wait(1.0)
                continue  # the answer is sent again with the next try
            answer = None
            if item is not None:
                self._pass_turn(me)
                answer = self._answer(cast(bytes, item[1]))
        with self._turns:
            if self._listener == me:
                self._listener = None
            self._turns.notify_all()
        if answer is not None:
            try:
                replies.send(client, *answer)
            except redis.RedisError as exc:
                log.warning("sync lane: could not deliver an answer (%s)", exc)

    def _take_turn(self, me: int) -> tuple[bool, int | None]:
        """Whether we listen now (else we waited up to a second to be needed), and the client id
        of a thread that was listening idly instead of us, to be unblocked."""
        with self._turns:
            listener, warm = self._listener, self._just_answered.pop(me, False)
            if listener is None or listener == me:
                self._listener = me
                return True, None
            if warm:  # take the turn from the idle listener
                self._listener = me
                return True, self._client_ids.get(listener)
            self._turns.wait(IDLE_POLL_SECONDS)
            if self._listener is not None:
                return False, None
            self._listener = me
        # called in because a thread took a frame: let it read and decode its image first, as
        # our Python (building the BRPOP) would hold the GIL it needs for that
        time.sleep(FOLLOW_DELAY_SECONDS)
        with self._turns:
            return self._listener == me, None  # it may have finished and taken the turn back

    def _pass_turn(self, me: int) -> None:
        """We took a frame: let an idle thread listen meanwhile."""
        with self._turns:
            self._just_answered[me] = True
            if self._listener == me:
                self._listener = None
                self._turns.notify()

    def _answer(self, data: bytes) -> tuple[str, bytes] | None:
        """Answer one frame: at once to its port, or returned for its reply list. None when
        nobody waits for an answer or it has gone to the port."""
        try:
            frame = decode(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("sync lane: dropped a malformed frame (%s)", exc)
            return None
        if time.time() > frame.deadline:  # its caller has been told the prediction timed out
            return None
        with logs.about(frame.service_id, frame.request_id or None):
            try:
                answer = replies.success(self.handle(frame.version_id, self._image(frame)))
            except Exception as exc:
                head = replies.failure(exc)
                answer = replies.encode(head)
                level = logging.ERROR if head["status"] >= 500 else logging.INFO
                log.log(level, "prediction for service %s failed: %s", frame.service_id, exc,
                        exc_info=level == logging.ERROR)
        if frame.port is not None and self.handoff is not None:
            try:
                if self.handoff.send_answer(frame.port, frame.reply_to, answer):
                    return None
            except (OSError, InvalidImage) as exc:
                log.warning("sync lane: could not answer port %s (%s)", frame.port, exc)
        return frame.reply_to, answer  # no port, or one we cannot reach: the reply list

    def _image(self, frame: Frame) -> bytes:
        if frame.port is None:
            return frame.image
        if self.handoff is None:
            raise InvalidImage("the image was handed over in shared memory that this worker "
                               "does not see; send it again")
        return self.handoff.read_image(frame.port, frame.image_size)

    def _advertise(self) -> None:
        """Tell APIs on this machine that frames may leave their image in our shared memory."""
        assert self.handoff is not None
        client = redis.Redis.from_url(self.redis_url)
        key, swept = LOCAL_LANES.format(flavor=self.flavor), 0.0
        while not self._stop.is_set():
            try:
                client.zadd(key, {self.handoff.id: time.time()})
            except redis.RedisError:
                pass  # the lane threads report Redis trouble
            if time.monotonic() - swept > SWEEP_SECONDS:
                swept = time.monotonic()
                if removed := self.handoff.sweep(ORPHAN_SECONDS):
                    log.info("removed %d files dead processes left in shared memory", removed)
            self._stop.wait(ADVERTISE_SECONDS)
        try:
            client.zrem(key, self.handoff.id)  # another worker here advertises again within 2 s
        except redis.RedisError:
            pass
