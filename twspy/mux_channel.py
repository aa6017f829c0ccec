"""One logical mux channel as the transport a :class:`~twspy.connection.Connection` runs on.

:class:`ChannelSocket` offers what a Connection uses on a :class:`~twspy.websocket.websocket`
(``send_raw``, ``read_frame``, ``send_lock``, ...) over a session of :mod:`twspy.mux_session`:
frames arrive in a queue the session's reader fills, and flow control (§6 of the notes) keeps
that queue within the window granted to the peer. No thread of its own.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Protocol

from .connection import DEFAULT_CLOSE_TIMEOUT
from .errors import ConnectionClosed, ProtocolError
from .extension import ExtensionCodec
from .frame import CLOSE_ABNORMAL, CLOSE_PROTOCOL_ERROR, OPCODE_CLOSE, OPCODE_CONTINUATION, Frame, read_frame
from .handshake import Headers, Request
from .mux_frames import (
    DROP_BAD_FRAGMENTATION,
    DROP_CHANNEL_FAILED,
    DROP_NORMAL,
    DROP_QUOTA_VIOLATION,
    KNOWN_OPCODES,
    MAX_NUMBER,
    AddChannelResponse,
    DropChannel,
    FlowControl,
    encode_channel_id,
)

__all__ = ["ChannelSocket", "ChannelOwner", "PendingOpen", "MAX_FRAGMENT"]

MAX_FRAGMENT = 16 * 1024         # largest logical frame we send: channels interleave at this grain


class ChannelOwner(Protocol):
    """What a channel needs from its session (:class:`~twspy.mux_session.MuxSession`)."""

    server_side: bool
    ws: Any        # the physical websocket: address, max_size
    config: Any    # the Multiplex extension: send_timeout
    window: int    # the receive quota granted per channel

    def send_frame(self, lsock: ChannelSocket, header: bytes, payload: bytes) -> None:
        """Send one encapsulated logical frame."""

    def queue_blocks(self, *blocks: bytes) -> None:
        """Hand control blocks to the writer."""

    def remove(self, lsock: ChannelSocket) -> bool:
        """Take an ended channel out of the table."""


class ChannelSocket:
    """One logical channel, with the transport interface :class:`~twspy.connection.Connection`
    uses on a :class:`~twspy.websocket.websocket` (``send_raw``, ``read_frame``, ...).

    Frames arrive in a queue filled by the session's reader; reading one returns its cost as
    send quota to the peer (FlowControl), so the queue holds at most ``window`` bytes.
    Sending waits for quota and splits data frames to fit it (§6). Attributes ``path``,
    ``headers`` (of the channel's handshake), ``protocol``, ``address`` (the physical peer's),
    ``drop_code`` and ``drop_reason`` (of a DropChannel that ended it).
    """

    handshake_done = True
    can_share_frames = False

    def __init__(self, session: ChannelOwner, channel_id: int, path: str | None, headers: Headers | None,
                 protocol: str | None, send_quota: int, recv_credit: int,
                 close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None:
        self.session = session
        self.channel_id = channel_id
        self.server_side = session.server_side
        self.path = path
        self.headers = headers
        self.request: Request | None = None  # server: the channel's upgrade request
        self.protocol = protocol
        self.address = session.ws.address
        self.max_size = session.ws.max_size
        self.message_codecs: list[ExtensionCodec] = []
        self.extensions: list[ExtensionCodec] = []
        self.send_lock = threading.Lock()
        self.close_timeout = close_timeout
        self.send_timeout = session.config.send_timeout
        self.close_sent = False
        self.close_received = False
        self.drop_code: int | None = None
        self.drop_reason = ""
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._writable = threading.Condition(self._lock)
        self._queue: collections.deque[tuple[Frame, int]] = collections.deque()
        self._queued = 0            # cost of the frames in the queue
        self._send_quota = send_quota
        self._recv_credit = recv_credit  # granted to the peer and not used yet
        self._to_grant = 0
        self._in_message = False    # receiving a fragmented message
        self._ended = False
        self._error: BaseException | None = None
        self.prefix = encode_channel_id(channel_id)
        self.pending: PendingOpen | None = None

    def __repr__(self) -> str:
        return "<twspy.multiplex.ChannelSocket %d %s path=%r>" % (
            self.channel_id, "ended" if self._ended else "open", self.path)

    @property
    def queued_bytes(self) -> int:
        """Bytes (frame costs) received and not read yet: at most the window."""
        return self._queued

    @property
    def send_quota(self) -> int:
        """Bytes this end may still send before the peer grants more."""
        return self._send_quota

    # -- sending ----------------------------------------------------------------------------
    def send_raw(self, opcode: int, payload: bytes, final: bool = True, rsv: int = 0) -> None:
        """Send one logical frame; the caller holds ``send_lock``.

        Waits for send quota (§6): a data frame is split into fragments that fit, a control
        frame waits for all of its cost (a close frame at most ``close_timeout``). Raises
        ConnectionResetError once the channel has ended, TimeoutError (both OSErrors).
        """
        session = self.session
        if opcode >= 0x8:
            cost = len(payload) + 1
            self._take_quota(cost, cost, self.close_timeout if opcode == OPCODE_CLOSE else self.send_timeout)
            session.send_frame(self, bytes((0x80 | rsv | opcode,)), payload)
            if opcode == OPCODE_CLOSE:
                self.close_sent = True
            return
        n = len(payload)
        pos = 0
        while True:
            overhead = 0 if opcode == OPCODE_CONTINUATION else 1
            want = min(n - pos, MAX_FRAGMENT)
            # At least one payload byte per fragment (or the whole frame when it is empty).
            got = self._take_quota(overhead + want, overhead + min(want, 1), self.send_timeout) - overhead
            last = pos + got == n
            header = bytes((((0x80 if final else 0) if last else 0) | rsv | opcode,))
            session.send_frame(self, header, payload[pos:pos + got] if pos or not last else payload)
            pos += got
            if last:
                return
            opcode, rsv = OPCODE_CONTINUATION, 0

    def _take_quota(self, maximum: int, minimum: int, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._ended:
                    raise ConnectionResetError("mux channel %d has ended" % self.channel_id)
                if self._send_quota >= minimum:
                    got = min(self._send_quota, maximum)
                    self._send_quota -= got
                    return got
                if deadline is None:
                    self._writable.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("mux channel %d: no send quota within %ss" % (self.channel_id, timeout))
                    self._writable.wait(left)

    def send(self, *frames: Frame) -> None:
        """Send whole frames, in order (the websocket API)."""
        with self.send_lock:
            for frame in frames:
                self.send_raw(frame.opcode, frame.payload, frame.final, frame.rsv)

    def send_nowait(self, data: bytes) -> int:
        """A channel never sends without blocking: -1 (Connection then uses its flusher)."""
        return -1

    def frame_bytes(self, opcode: int, payload: bytes, final: bool = True, rsv: int = 0) -> bytes | None:
        """None: a channel's frames only exist once encapsulated (Connection then queues the message)."""
        return None

    def send_frame_bytes(self, data: bytes) -> None:
        """Send encoded RFC 6455 frames (Connection.start_close, prepared broadcasts) as logical frames.

        Bytes that are not whole frames raise ConnectionAbortedError: an OSError, so the
        Connection ends the channel instead of losing its flusher thread.
        """
        view = memoryview(data)
        while view:
            try:
                frame, used = read_frame(view)
            except ProtocolError as exc:
                raise ConnectionAbortedError("mux channel %d: not frames: %s" % (self.channel_id, exc)) from None
            if frame is None:
                raise ConnectionAbortedError("mux channel %d: incomplete frame" % self.channel_id)
            self.send_raw(frame.opcode, frame.payload, frame.final, frame.rsv)
            view = view[used:]

    # -- receiving --------------------------------------------------------------------------
    def read_frame(self, deadline: float | None = None) -> Frame:
        """The next logical frame. Raises the ProtocolError that failed the channel, then
        ConnectionClosed(1006) once it has ended, TimeoutError after ``deadline``."""
        with self._lock:
            while not self._queue:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if self._ended:
                    raise ConnectionClosed(CLOSE_ABNORMAL, "")
                if deadline is None:
                    self._readable.wait()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("timed out waiting for a frame")
                    self._readable.wait(left)
            return self._pop()

    def recv(self, timeout: float | None = None) -> Frame:
        """:meth:`read_frame` with a relative timeout (the websocket API)."""
        return self.read_frame(None if timeout is None else time.monotonic() + timeout)

    def _pop(self) -> Frame:
        # Holding _lock. Return the frame's cost to the peer: now or, batched, a little later.
        frame, cost = self._queue.popleft()
        self._queued -= cost
        if frame.opcode == OPCODE_CLOSE:
            self.close_received = True
        if cost and not self._ended and not self.close_received:  # after its close, the peer sends nothing
            self._to_grant += cost
            if self._to_grant >= max(1, self.session.window // 4) or not self._queue:
                grant, self._to_grant = self._to_grant, 0
                self._recv_credit += grant
                self.session.queue_blocks(FlowControl(self.channel_id, grant).encode())
        return frame

    def deliver(self, frame: Frame) -> tuple[int, str, int] | None:
        """Queue a frame from the reader; ``(drop code, why, local close code)`` if it breaks the rules."""
        opcode = frame.opcode
        size = len(frame.payload)
        cost = size + (opcode != OPCODE_CONTINUATION)
        with self._lock:
            if self._ended:
                return None
            if cost > self._recv_credit:
                return (DROP_QUOTA_VIOLATION, "frame of cost %d exceeds the %d bytes of quota granted" % (
                    cost, self._recv_credit), DROP_QUOTA_VIOLATION)
            self._recv_credit -= cost
            if opcode not in KNOWN_OPCODES:
                return DROP_CHANNEL_FAILED, "reserved opcode 0x%x" % opcode, CLOSE_PROTOCOL_ERROR
            if frame.rsv:
                return DROP_CHANNEL_FAILED, "RSV bits set without an extension on the channel", CLOSE_PROTOCOL_ERROR
            if opcode >= 0x8:
                if not frame.final:
                    return DROP_BAD_FRAGMENTATION, "fragmented control frame", DROP_BAD_FRAGMENTATION
                if size > 125:
                    return DROP_CHANNEL_FAILED, "control frame of %d bytes" % size, CLOSE_PROTOCOL_ERROR
            elif opcode == OPCODE_CONTINUATION:
                if not self._in_message:
                    return (DROP_BAD_FRAGMENTATION, "continuation frame without a message to continue",
                            DROP_BAD_FRAGMENTATION)
                self._in_message = not frame.final
            else:
                if self._in_message:
                    return (DROP_BAD_FRAGMENTATION, "new data frame inside a fragmented message",
                            DROP_BAD_FRAGMENTATION)
                self._in_message = not frame.final
            self._queue.append((frame, cost))
            self._queued += cost
            self._readable.notify()
        return None

    def add_quota(self, quota: int) -> bool:
        """FlowControl from the peer; False when it pushes the quota past 2^63-1 (3006)."""
        with self._lock:
            if self._send_quota + quota > MAX_NUMBER:
                return False
            self._send_quota += quota
            self._writable.notify_all()
        return True

    # -- ending -----------------------------------------------------------------------------
    def terminate(self, discard: bool = True, error: BaseException | None = None,
                   drop_code: int | None = None, drop_reason: str = "") -> bool:
        """End the channel here: wake readers and senders. False if it had ended already."""
        with self._lock:
            if self._ended:
                return False
            self._ended = True
            if discard:
                self._queue.clear()
                self._queued = 0
            self._error = error
            self.drop_code, self.drop_reason = drop_code, drop_reason
            self._readable.notify_all()
            self._writable.notify_all()
            pending = self.pending
        if pending is not None and not pending.event.is_set():  # an open_channel() waiting for its answer
            pending.error = ConnectionClosed(CLOSE_ABNORMAL, "channel %d ended before it opened (%s %s)" % (
                self.channel_id, drop_code, drop_reason))
            pending.event.set()
        return True

    def half_close(self) -> None:
        """Nothing to do: our close frame already told the peer we send no more."""

    def wait_eof(self, deadline: float | None, discard: bool = False) -> None:
        """Wait (bounded) until the peer's close frame arrived or the channel ended, dropping
        the frames read meanwhile (their quota goes back, so the close frame can come); never raises."""
        with self._lock:
            while not self._ended and not self.close_received:
                if self._queue:
                    self._pop()
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                self._readable.wait(left)

    def abort(self) -> None:
        """Release the channel; DropChannel(1000) unless both close frames went through (§7)."""
        clean = self.close_sent and self.close_received
        if self.terminate():
            if self.session.remove(self) and not clean:
                self.session.queue_blocks(DropChannel(self.channel_id, DROP_NORMAL).encode())

    close = abort


class PendingOpen:
    """An AddChannelRequest waiting for its response."""

    __slots__ = ("event", "response", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.response: AddChannelResponse | None = None
        self.error: BaseException | None = None
