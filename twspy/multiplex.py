"""Multiplexing (``mux``): many logical WebSocket channels over one connection.

Implements the twspy profile of draft-ietf-hybi-websocket-multiplexing (the -08 wire format,
labelled -11; see ``spec/multiplex.md``). Opt-in on both ends and twspy-to-twspy: no browser
ever shipped mux.

Layers, bottom up:

* encodings, no I/O, in :mod:`twspy.mux_frames` (re-exported here): channel IDs and "1/3/9"
  numbers (§3), encapsulated logical frames (:func:`encapsulate`, :func:`decapsulate`, §4),
  the five control blocks (§5), the drop reason codes (§7.1);
* :class:`Multiplex`, the extension (negotiation, §2), and its identity codec;
* :class:`ChannelSocket`, a logical channel seen as the transport a
  :class:`~twspy.connection.Connection` runs on, with flow control (§6);
* the session: one reader per physical connection demultiplexes into bounded per-channel
  queues; :class:`MuxClient` on the client, :func:`serve_multiplexed` on the server.

Client::

    from twspy.multiplex import connect_multiplexed

    with connect_multiplexed("ws://127.0.0.1:8000/", timeout=5) as mux:
        mux.default_channel.send("on channel 1")      # the handshake's own channel
        chat = mux.open_channel("/chat")               # AddChannelRequest, then a Channel
        chat.send("hello")
        print(chat.recv(timeout=5))
        chat.close(1000, "bye")                        # a logical closing handshake

A :class:`Channel` is a :class:`~twspy.connection.Connection`: ``send``, ``recv``, iteration,
``send_ping``, ``close`` and the ``on*`` handlers behave as usual. Equivalently
``twspy.connect(url, extensions=[Multiplex()], connection_class=MuxClient)``.

Server: add the extension, nothing else changes. Every logical channel reaches the
:class:`~twspy.server.Server` handlers as a client of its own (``client.path`` is the path of
its AddChannelRequest), so an unmodified Server subclass serves multiplexed clients::

    server = EchoServer(("127.0.0.1", 8000), extensions=[Multiplex()])

Flow control: each side grants ``window`` bytes of send quota per channel and returns quota
as its consumer takes frames, so a channel whose reader is slow stops getting data without
blocking the others, and no queue grows beyond ``window`` bytes. A sender out of quota
blocks (until quota, the end of the channel or ``send_timeout``).

Decisions of the twspy profile (``[twspy]`` in the notes): channel 1 is the default channel,
0 carries control blocks; the client never reuses a channel ID; the server grants
``max_channels`` slots after the handshake and one more whenever an added channel ends or a
request is refused; protocol errors inside a channel drop it (DropChannel 3xxx) and the local
Connection ends with that code (1002 for RFC 6455 violations), errors in the encapsulation
fail the physical connection (DropChannel(0, 2xxx), then Close 1011).

Not implemented (deferrable per §8): per-channel extensions, idle timeout (3007),
delta-encoded AddChannelResponse (refused with 2012); the client sends identity requests only
(the server decodes identity and delta).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from typing import (TYPE_CHECKING, Any, Deque, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Type,
                    Union, cast)

from .client import connect
from .connection import CLOSED, DEFAULT_CLOSE_TIMEOUT, Connection
from .errors import ConnectionClosed, HandshakeError, InvalidState, NegotiationError, ProtocolError
from .extension import Extension, ExtensionCodec, Params
from .frame import (CLOSE_ABNORMAL, CLOSE_MISSING_EXTENSIONS, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_UNABLE,
                    OPCODE_BINARY, OPCODE_CLOSE, OPCODE_CONTINUATION, RSV1, RSV2, RSV3, Frame, encode_close,
                    read_frame, valid_close_code)
from .handshake import Headers, Request, make_key, parse_request, server_handshake
from .mux_frames import (DROP_ACKNOWLEDGED, DROP_BAD_FRAGMENTATION, DROP_BAD_REQUEST, DROP_BAD_RESPONSE,
                         DROP_CHANNEL_EXISTS, DROP_CHANNEL_FAILED, DROP_CHANNEL_ID_TRUNCATED, DROP_FRAME_TRUNCATED,
                         DROP_IDLE_TIMEOUT, DROP_INVALID_BLOCK, DROP_INVALID_ENCAPSULATION, DROP_NORMAL,
                         DROP_PHYSICAL_FAILED, DROP_QUOTA_OVERFLOW, DROP_QUOTA_VIOLATION, DROP_SLOT_OVERFLOW,
                         DROP_SLOT_VIOLATION, DROP_UNKNOWN_OPCODE, DROP_UNKNOWN_REQUEST_ENCODING,
                         DROP_UNKNOWN_RESPONSE_ENCODING, ENCODING_DELTA, ENCODING_IDENTITY, MAX_CHANNEL_ID, MAX_NUMBER,
                         _KNOWN_OPCODES, AddChannelRequest, AddChannelResponse, ControlBlock, DropChannel, FlowControl,
                         MuxError, NewChannelSlot, _accept_head, _apply_delta, _check_response, _request_head,
                         _status_head, decapsulate, decode_channel_id, decode_number, encapsulate, encode_channel_id,
                         encode_control_blocks, encode_number, parse_control_blocks)
from .mux_frames import _ID_FORMS, _check_encoding, _sized  # noqa: F401 (were importable from here before the split)
from .websocket import websocket

if TYPE_CHECKING:  # pragma: no cover
    from .server import Server

__all__ = [
    "Multiplex", "MultiplexCodec", "MuxClient", "Channel", "ChannelSocket", "MuxError",
    "connect_multiplexed", "serve_multiplexed",
    "AddChannelRequest", "AddChannelResponse", "FlowControl", "DropChannel", "NewChannelSlot", "ControlBlock",
    "encode_channel_id", "decode_channel_id", "encode_number", "decode_number",
    "encapsulate", "decapsulate", "encode_control_blocks", "parse_control_blocks",
    "MAX_CHANNEL_ID", "MAX_NUMBER", "DEFAULT_WINDOW", "DEFAULT_MAX_CHANNELS", "MAX_FRAGMENT",
    "ENCODING_IDENTITY", "ENCODING_DELTA",
    "DROP_NORMAL", "DROP_PHYSICAL_FAILED", "DROP_INVALID_ENCAPSULATION", "DROP_CHANNEL_ID_TRUNCATED",
    "DROP_FRAME_TRUNCATED", "DROP_UNKNOWN_OPCODE", "DROP_INVALID_BLOCK", "DROP_CHANNEL_EXISTS",
    "DROP_SLOT_VIOLATION", "DROP_SLOT_OVERFLOW", "DROP_BAD_REQUEST", "DROP_UNKNOWN_REQUEST_ENCODING",
    "DROP_BAD_RESPONSE", "DROP_UNKNOWN_RESPONSE_ENCODING", "DROP_CHANNEL_FAILED", "DROP_QUOTA_VIOLATION",
    "DROP_QUOTA_OVERFLOW", "DROP_IDLE_TIMEOUT", "DROP_ACKNOWLEDGED", "DROP_BAD_FRAGMENTATION",
]

logger = logging.getLogger("twspy.multiplex")

DEFAULT_WINDOW = 64 * 1024       # receive quota granted per channel (pywebsocket grants 8 KiB)
DEFAULT_MAX_CHANNELS = 64        # slots a server grants (pywebsocket: 64)
MAX_FRAGMENT = 16 * 1024         # largest logical frame we send: channels interleave at this grain
DEFAULT_OPEN_TIMEOUT = 10.0      # seconds open_channel waits for a slot and the AddChannelResponse
_STOP_CHECK = 0.5                # server: how often an idle session looks for Server.shutdown()
_MAX_CONTROL_MESSAGE = 32 * 1024  # control blocks are batched into channel-0 messages up to this size


# -- the extension (§2) ------------------------------------------------------------------------

class MultiplexCodec(ExtensionCodec):
    """The negotiated ``mux`` of one physical connection.

    It transforms nothing (the Connection layer is replaced instead: see :class:`MuxClient`
    and :func:`serve_multiplexed`). ``quota`` is the offer's ``quota`` parameter (server).
    """

    name = "mux"
    rsv = 0
    per_frame = False

    def __init__(self, config: "Multiplex", quota: Optional[int] = None) -> None:
        self.config = config
        self.quota = quota

    def serve_connection(self, server: "Server", ws: websocket) -> None:
        """The Server's takeover hook: serve a client that negotiated ``mux`` (see :func:`serve_multiplexed`)."""
        serve_multiplexed(server, ws)

    def __repr__(self) -> str:
        return "MultiplexCodec(%r, quota=%r)" % (self.config, self.quota)


class Multiplex(Extension):
    """The ``mux`` extension (twspy profile of §2), for clients and servers.

    The client offers exactly ``mux``; the server accepts it only as the only extension of
    the physical connection. Negotiation claims all three RSV bits (``rsv``) so that
    :func:`~twspy.extension.negotiate_server` declines mux next to permessage-deflate or
    deflate-frame, and a client refuses a server that accepts both; the codec uses no RSV bit,
    so physical frames carrying one still fail with 1002.

    Args:
        window: receive quota granted per channel, in bytes: the most one channel's peer may
            have in flight, and so the largest per-channel queue.
        max_channels: server: channels a client may add at once (NewChannelSlot); 0 tells
            clients not to add any (fallback).
        send_timeout: seconds a data frame waits for send quota before the channel is given up
            (None: as long as the channel lives).
    """

    name = "mux"
    rsv = RSV1 | RSV2 | RSV3

    def __init__(self, window: int = DEFAULT_WINDOW, max_channels: int = DEFAULT_MAX_CHANNELS,
                 send_timeout: Optional[float] = None) -> None:
        if not 1 <= window <= MAX_NUMBER:
            raise ValueError("window must be a positive number of bytes, not %r" % (window,))
        if max_channels < 0:
            raise ValueError("max_channels must be >= 0, not %r" % (max_channels,))
        self.window = window
        self.max_channels = max_channels
        self.send_timeout = send_timeout

    def offers(self) -> List[Tuple[str, Params]]:
        """The twspy client offers ``mux`` with no parameters."""
        return [(self.name, [])]

    def accept_offer(self, name: str, params: Params) -> Optional[Tuple[Params, ExtensionCodec]]:
        """Accept ``mux``; a valid ``quota=N`` (-08) is the initial send quota on channel 1.

        An invalid ``quota`` is ignored; other parameters decline the offer.
        """
        quota = None
        for pname, value in params:
            if pname != "quota":
                logger.debug("declining mux offer with parameter %s", pname)
                return None
            if value is not None and value.isdigit() and value.isascii() and int(value) < 1 << 32:
                quota = int(value)
        return [], MultiplexCodec(self, quota)

    def accept_response(self, name: str, params: Params, offers: List[Tuple[str, Params]]) -> ExtensionCodec:
        """A twspy server answers a bare ``mux``."""
        if params:
            raise NegotiationError("unexpected parameters in the mux response: %r" % (params,))
        return MultiplexCodec(self)

    def __repr__(self) -> str:
        return "Multiplex(window=%r, max_channels=%r, send_timeout=%r)" % (
            self.window, self.max_channels, self.send_timeout)


# -- a logical channel as a transport ----------------------------------------------------------

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

    def __init__(self, session: "_Session", channel_id: int, path: Optional[str], headers: Optional[Headers],
                 protocol: Optional[str], send_quota: int, recv_credit: int,
                 close_timeout: Optional[float] = DEFAULT_CLOSE_TIMEOUT) -> None:
        self.session = session
        self.channel_id = channel_id
        self.server_side = session.server_side
        self.path = path
        self.headers = headers
        self.request: Optional[Request] = None  # server: the channel's upgrade request
        self.protocol = protocol
        self.address = session.ws.address
        self.max_size = session.ws.max_size
        self.message_codecs: List[ExtensionCodec] = []
        self.extensions: List[ExtensionCodec] = []
        self.send_lock = threading.Lock()
        self.close_timeout = close_timeout
        self.send_timeout = session.config.send_timeout
        self.close_sent = False
        self.close_received = False
        self.drop_code: Optional[int] = None
        self.drop_reason = ""
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._writable = threading.Condition(self._lock)
        self._queue: Deque[Tuple[Frame, int]] = collections.deque()
        self._queued = 0            # cost of the frames in the queue
        self._send_quota = send_quota
        self._recv_credit = recv_credit  # granted to the peer and not used yet
        self._to_grant = 0
        self._in_message = False    # receiving a fragmented message
        self._ended = False
        self._error: Optional[BaseException] = None
        self._prefix = encode_channel_id(channel_id)
        self._pending: Optional[_PendingOpen] = None

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
            session._send_frame(self, bytes((0x80 | rsv | opcode,)), payload)
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
            session._send_frame(self, header, payload[pos:pos + got] if pos or not last else payload)
            pos += got
            if last:
                return
            opcode, rsv = OPCODE_CONTINUATION, 0

    def _take_quota(self, maximum: int, minimum: int, timeout: Optional[float]) -> int:
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

    def frame_bytes(self, opcode: int, payload: bytes, final: bool = True, rsv: int = 0) -> Optional[bytes]:
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
    def read_frame(self, deadline: Optional[float] = None) -> Frame:
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

    def recv(self, timeout: Optional[float] = None) -> Frame:
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
                self.session._queue_blocks(FlowControl(self.channel_id, grant).encode())
        return frame

    def _deliver(self, frame: Frame) -> Optional[Tuple[int, str, int]]:
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
            if opcode not in _KNOWN_OPCODES:
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

    def _add_quota(self, quota: int) -> bool:
        """FlowControl from the peer; False when it pushes the quota past 2^63-1 (3006)."""
        with self._lock:
            if self._send_quota + quota > MAX_NUMBER:
                return False
            self._send_quota += quota
            self._writable.notify_all()
        return True

    # -- ending -----------------------------------------------------------------------------
    def _terminate(self, discard: bool = True, error: Optional[BaseException] = None,
                   drop_code: Optional[int] = None, drop_reason: str = "") -> bool:
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
            pending = self._pending
        if pending is not None and not pending.event.is_set():  # an open_channel() waiting for its answer
            pending.error = ConnectionClosed(CLOSE_ABNORMAL, "channel %d ended before it opened (%s %s)" % (
                self.channel_id, drop_code, drop_reason))
            pending.event.set()
        return True

    def half_close(self) -> None:
        """Nothing to do: our close frame already told the peer we send no more."""

    def wait_eof(self, deadline: Optional[float], discard: bool = False) -> None:
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
        if self._terminate():
            if self.session._remove(self) and not clean:
                self.session._queue_blocks(DropChannel(self.channel_id, DROP_NORMAL).encode())

    close = abort


class Channel(Connection):
    """A logical channel on the client: a :class:`~twspy.connection.Connection` over a
    :class:`ChannelSocket` (messages, fragmentation, UTF-8, ping/pong, closing handshake,
    handlers). Made by :meth:`MuxClient.open_channel` and as :attr:`MuxClient.default_channel`.
    """

    sock: ChannelSocket  # type: ignore[assignment]  # it offers the websocket's transport interface

    @property
    def channel_id(self) -> int:
        return self.sock.channel_id

    @property
    def mux(self) -> "MuxClient":
        """The :class:`MuxClient` this channel belongs to."""
        return cast(MuxClient, self.sock.session)

    @property
    def path(self) -> Optional[str]:
        return self.sock.path

    @property
    def headers(self) -> Optional[Headers]:
        """The headers of the channel's handshake response."""
        return self.sock.headers

    @property
    def drop_code(self) -> Optional[int]:
        """The reason code of the DropChannel that ended the channel, if one did."""
        return self.sock.drop_code

    @property
    def drop_reason(self) -> str:
        return self.sock.drop_reason

    def __repr__(self) -> str:
        return "<%s %d %s %s>" % (type(self).__name__, self.sock.channel_id, self.state, self.sock.path)


class _PendingOpen:
    """An AddChannelRequest waiting for its response."""

    __slots__ = ("event", "response", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.response: Optional[AddChannelResponse] = None
        self.error: Optional[BaseException] = None


# -- the session: one physical connection -------------------------------------------------------

class _Session:
    """What both roles share: the channel table, the reader's dispatch, control output."""

    server_side = False

    def __init__(self, ws: websocket, codec: MultiplexCodec, options: Mapping[str, Any]) -> None:
        self.ws = ws
        self.codec = codec
        self.config = codec.config
        self.window = codec.config.window
        self.physical = Connection(ws, **options)
        self.close_timeout: Optional[float] = options.get("close_timeout", DEFAULT_CLOSE_TIMEOUT)
        self._lock = threading.Lock()
        self._channels: Dict[int, ChannelSocket] = {}
        self._ended = False
        self._ctl_cond = threading.Condition()
        self._ctl_blocks: List[bytes] = []
        self._writer = threading.Thread(target=self._write_loop, name="twspy-mux-writer", daemon=True)
        self._debug = logger.isEnabledFor(logging.DEBUG)

    @property
    def closed(self) -> bool:
        """Whether the physical connection has ended."""
        return self._ended

    @property
    def address(self) -> Any:
        return self.ws.address

    def _new_channel(self, channel_id: int, path: Optional[str], headers: Optional[Headers],
                     protocol: Optional[str], send_quota: int) -> ChannelSocket:
        lsock = ChannelSocket(self, channel_id, path, headers, protocol, send_quota, self.window, self.close_timeout)
        with self._lock:
            if self._ended:
                lsock._terminate()
            else:
                self._channels[channel_id] = lsock
        return lsock

    # -- output -----------------------------------------------------------------------------
    def _queue_blocks(self, *blocks: bytes) -> None:
        """Hand control blocks to the writer thread; the reader never waits for the send lock
        (a writer stuck on a full TCP buffer would otherwise stop both ends reading)."""
        with self._ctl_cond:
            if self._ended:
                return
            self._ctl_blocks.extend(blocks)
            self._ctl_cond.notify()

    def _flush_control(self) -> None:
        """Send the queued control blocks; the caller holds the physical send lock."""
        with self._ctl_cond:
            if not self._ctl_blocks:
                return
            blocks, self._ctl_blocks = self._ctl_blocks, []
        if self.physical.close_sent:
            return
        batch: List[bytes] = [b"\x00"]
        size = 1
        for block in blocks:
            if size + len(block) > _MAX_CONTROL_MESSAGE and size > 1:
                self.ws.send_raw(OPCODE_BINARY, b"".join(batch))
                batch, size = [b"\x00"], 1
            batch.append(block)
            size += len(block)
        self.ws.send_raw(OPCODE_BINARY, b"".join(batch))

    def _write_loop(self) -> None:
        while True:
            with self._ctl_cond:
                while not self._ctl_blocks and not self._ended:
                    self._ctl_cond.wait()
                if self._ended:
                    return
            try:
                with self.ws.send_lock:
                    self._flush_control()
            except OSError as exc:
                logger.debug("mux: sending control blocks failed: %s", exc)
                self.ws.abort()  # the reader notices and ends the session
                return

    def _send_frame(self, lsock: ChannelSocket, header: bytes, payload: bytes) -> None:
        """Send one encapsulated logical frame after the pending control blocks (so an
        AddChannelResponse always precedes the channel's first frame)."""
        data = b"".join((lsock._prefix, header, payload))
        with self.ws.send_lock:
            if self._ended or self.physical.close_sent:
                raise ConnectionResetError("the multiplexed connection is closed")
            self._flush_control()
            self.ws.send_raw(OPCODE_BINARY, data)

    # -- input ------------------------------------------------------------------------------
    def _read_loop(self, poll: Optional[float] = None) -> None:
        """Read physical messages and dispatch them until the physical connection closes."""
        physical = self.physical
        while True:
            try:
                message = physical.recv(poll)
            except TimeoutError:
                self._idle()
                continue
            except ConnectionClosed:
                return
            try:
                if not isinstance(message.payload, bytes):
                    raise MuxError("text message on the physical connection", DROP_INVALID_ENCAPSULATION)
                cid, item = decapsulate(message.payload)
                if cid == 0:
                    for block in item:  # type: ignore[union-attr]
                        if self._debug:
                            logger.debug("mux < %r", block)
                        self._on_block(block)  # type: ignore[arg-type]
                else:
                    self._on_frame(cid, item)  # type: ignore[arg-type]
            except MuxError as exc:
                self._fail_physical(exc.code, exc.message)

    def _idle(self) -> None:
        """Called when a polling read times out."""

    def _on_frame(self, cid: int, frame: Frame) -> None:
        with self._lock:
            lsock = self._channels.get(cid)
        if lsock is None:
            return  # §4: not open (any more): a race after DropChannel, ignored
        problem = lsock._deliver(frame)
        if problem is not None:
            self._fail_channel(lsock, *problem)

    def _on_block(self, block: ControlBlock) -> None:
        if isinstance(block, FlowControl):
            with self._lock:
                lsock = self._channels.get(block.channel_id)
            if lsock is not None and not lsock._add_quota(block.quota):
                self._fail_channel(lsock, DROP_QUOTA_OVERFLOW, "send quota overflow", DROP_QUOTA_OVERFLOW)
        elif isinstance(block, DropChannel):
            self._on_drop(block)
        else:
            raise MuxError("%s received by the %s" % (type(block).__name__, "server" if self.server_side else
                                                      "client"), DROP_INVALID_BLOCK)

    def _on_drop(self, block: DropChannel) -> None:
        cid = block.channel_id
        if cid == 0:
            logger.warning("mux: the peer failed the physical connection: %s %s", block.code, block.message)
            return
        with self._lock:
            lsock = self._channels.get(cid)
        if lsock is None:
            return  # unknown, or an acknowledgement of our own drop
        logger.info("mux channel %d dropped by the peer: %s %s", cid, block.code, block.message)
        lsock._terminate(discard=False, drop_code=block.code, drop_reason=block.message)
        self._remove(lsock)
        if block.code != DROP_ACKNOWLEDGED:  # never acknowledge an acknowledgement
            self._queue_blocks(DropChannel(cid, DROP_ACKNOWLEDGED, "DropChannel acknowledged").encode())

    def _remove(self, lsock: ChannelSocket) -> bool:
        """Take an ended channel out of the table; False if it was not there."""
        with self._lock:
            if self._channels.get(lsock.channel_id) is not lsock:
                return False
            del self._channels[lsock.channel_id]
        self._channel_removed(lsock)
        return True

    def _channel_removed(self, lsock: ChannelSocket) -> None:
        """A channel left the table (a server grants a new slot for it)."""

    def _fail_channel(self, lsock: ChannelSocket, code: int, message: str, local_code: int) -> None:
        """Fail the logical channel (§7): DropChannel with ``code``; locally a ProtocolError."""
        logger.info("mux channel %d failed: %s (%d)", lsock.channel_id, message, code)
        if lsock._terminate(error=ProtocolError(message, local_code), drop_code=code, drop_reason=message):
            self._remove(lsock)
            self._queue_blocks(DropChannel(lsock.channel_id, code, message).encode())

    def _fail_physical(self, code: int, message: str) -> None:
        """Fail the physical connection (§7): DropChannel(0, code), then Close 1011."""
        logger.info("mux: failing the physical connection: %s (%d)", message, code)
        try:
            with self.ws.send_lock:
                if not self.physical.close_sent:
                    self.ws.send_raw(OPCODE_BINARY, encode_control_blocks(DropChannel(0, code, message[:100])))
        except OSError:
            pass
        self.physical._fail(ProtocolError("mux: %s (%d)" % (message, code), CLOSE_UNABLE))

    def _end(self) -> None:
        """The physical connection is over: every channel ends (1006)."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            channels = list(self._channels.values())
            self._channels.clear()
        with self._ctl_cond:
            self._ctl_blocks = []
            self._ctl_cond.notify_all()
        for lsock in channels:
            lsock._terminate()
        self.physical.abort()


class MuxClient(_Session):
    """The client end of a multiplexed connection (built by :func:`connect_multiplexed`).

    Also usable as ``twspy.connect(url, extensions=[Multiplex()], connection_class=MuxClient)``.
    Raises NegotiationError (after closing with 1010) when the server did not accept exactly
    ``mux``. ``options`` are Connection options: all of them (keepalive pings included) apply
    to the physical connection; channels get the same without keepalive.

    Attributes:
        default_channel: channel 1, bound to the physical handshake (its path, subprotocol).
        physical: the physical :class:`~twspy.connection.Connection` (don't send on it).
    """

    def __init__(self, sock: websocket, channel_class: Type[Connection] = Channel, **options: Any) -> None:
        codecs = list(sock.extensions)
        if len(codecs) != 1 or not isinstance(codecs[0], MultiplexCodec):
            Connection(sock, close_timeout=options.get("close_timeout", DEFAULT_CLOSE_TIMEOUT)).close(
                CLOSE_MISSING_EXTENSIONS, "mux required")
            raise NegotiationError("the server did not accept mux as the only extension (%s)" % (
                ", ".join(c.name for c in codecs) or "no extension"))
        self.channel_class = channel_class
        self.channel_options = _channel_options(options)
        super().__init__(sock, codecs[0], options)
        self._slot_cond = threading.Condition(self._lock)
        self._slot_grants: Deque[List[int]] = collections.deque()  # [slots, initial quota]
        self._slot_total = 0
        self._fallback = False
        self._next_id = 2
        self._abandoned: Set[int] = set()
        self._conns: Dict[int, Connection] = {}
        self._host = sock.host or _host_of(sock.address)
        # [twspy] §6: our receive quota for channel 1 goes out right after the 101.
        lsock = self._new_channel(1, sock.path or "/", sock.headers, sock.protocol, 0)
        self._queue_blocks(FlowControl(1, self.window).encode())
        self.default_channel = self._conns[1] = channel_class(lsock, **self.channel_options)  # type: ignore[arg-type]
        self._reader = threading.Thread(target=self._run, name="twspy-mux-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    def __repr__(self) -> str:
        return "<MuxClient %s %d channels>" % ("closed" if self._ended else "open", len(self._channels))

    @property
    def channels(self) -> List[Connection]:
        """The channels not closed yet."""
        with self._lock:
            return [c for c in self._conns.values() if c.state != CLOSED]

    def _run(self) -> None:
        try:
            self._read_loop()
        except Exception:
            logger.exception("mux: reader failed")
        finally:
            self._end()
            with self._lock:
                conns = list(self._conns.values())
                self._slot_cond.notify_all()
            for conn in conns:  # each gets its onclose once (a reading thread may beat us to it)
                conn._lost(None)

    def open_channel(self, path: str = "/", protocols: Sequence[str] = (), origin: Optional[str] = None,
                     headers: Union[None, Mapping[str, str], Iterable[Tuple[str, str]]] = None,
                     timeout: Optional[float] = DEFAULT_OPEN_TIMEOUT,
                     channel_class: Optional[Type[Connection]] = None, **options: Any) -> Connection:
        """Open a logical channel to ``path`` (AddChannelRequest) and return it once accepted.

        Args:
            path: the resource (path and query) of the channel.
            protocols: subprotocols to offer (``channel.protocol`` is the chosen one).
            origin: the Origin header (default: the physical handshake's).
            headers: extra request headers.
            timeout: seconds to wait for a channel slot and for the server's answer.
            channel_class: the Connection subclass to build (default: this client's).
            **options: ``close_timeout``, ``max_size``, ``max_queue``, ``max_outbox``
                (keepalive pings run on the physical connection, not per channel).

        Raises:
            HandshakeError (``status``) when the server refuses the channel, NegotiationError
            for an answer we can't accept, InvalidState when the server allows no more
            channels (fallback), TimeoutError, ConnectionClosed.
        """
        if not path.startswith("/"):
            raise ValueError("path must start with '/': %r" % path)
        header_list = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        head = _request_head(path, self._host, origin if origin is not None else self.ws.origin, protocols,
                             header_list)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._slot_cond:
            while True:
                if self._ended:
                    raise ConnectionClosed(self.physical.close_code or CLOSE_ABNORMAL,
                                           "the multiplexed connection closed")
                if self._fallback:
                    raise InvalidState("the server allows no more logical channels on this connection")
                if self._slot_grants:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("no channel slot from the server within %ss" % timeout)
                self._slot_cond.wait(left)
            if self._next_id > MAX_CHANNEL_ID:
                raise InvalidState("channel IDs exhausted on this connection")
            grant = self._slot_grants[0]
            grant[0] -= 1
            self._slot_total -= 1
            if not grant[0]:
                self._slot_grants.popleft()
            cid = self._next_id
            self._next_id += 1  # [twspy] §7: never reused
            lsock = ChannelSocket(self, cid, path, None, None, grant[1], self.window,
                                  options.get("close_timeout", self.close_timeout))
            pending = lsock._pending = _PendingOpen()
            self._channels[cid] = lsock
        self._queue_blocks(AddChannelRequest(cid, head).encode(), FlowControl(cid, self.window).encode())
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not pending.event.wait(left):
            with self._lock:
                gave_up = not pending.event.is_set()
                if gave_up:
                    self._abandoned.add(cid)
            if gave_up:
                lsock._terminate()
                self._remove(lsock)
                self._queue_blocks(DropChannel(cid, DROP_NORMAL, "open timed out").encode())
                raise TimeoutError("no AddChannelResponse for channel %d within %ss" % (cid, timeout))
        lsock._pending = None
        if pending.error is not None:
            raise pending.error
        response = pending.response
        assert response is not None
        try:
            protocol, response_headers = _check_response(response, protocols)
        except HandshakeError as exc:
            if response.rejected:
                lsock._terminate()
                self._remove(lsock)
            else:
                self._fail_channel(lsock, DROP_CHANNEL_FAILED, exc.message, CLOSE_PROTOCOL_ERROR)
            raise
        lsock.headers, lsock.protocol = response_headers, protocol
        cls = channel_class or self.channel_class
        conn = cls(lsock, **_channel_options({**self.channel_options, **options}))  # type: ignore[arg-type]
        with self._lock:
            for done in [k for k, c in self._conns.items() if c.state == CLOSED]:
                del self._conns[done]  # keep the table to the channels still alive
            self._conns[cid] = conn
            ended = self._ended
        if ended:
            conn._lost(None)
        logger.info("mux channel %d open: %s", cid, path)
        return conn

    def _on_block(self, block: ControlBlock) -> None:
        if isinstance(block, AddChannelResponse):
            self._on_response(block)
        elif isinstance(block, NewChannelSlot):
            with self._slot_cond:
                if block.fallback:
                    self._fallback = True
                elif block.slots:
                    if self._slot_total + block.slots > MAX_NUMBER:
                        raise MuxError("channel slots overflow", DROP_SLOT_OVERFLOW)
                    self._slot_total += block.slots
                    self._slot_grants.append([block.slots, block.quota])
                self._slot_cond.notify_all()
        else:
            super()._on_block(block)

    def _on_response(self, block: AddChannelResponse) -> None:
        cid = block.channel_id
        with self._lock:
            lsock = self._channels.get(cid)
            pending = lsock._pending if lsock is not None else None
            if pending is None or pending.event.is_set():
                if cid in self._abandoned:
                    self._abandoned.discard(cid)  # we gave up on it and dropped it
                    return
                raise MuxError("AddChannelResponse for channel %d, which was not requested" % cid,
                               DROP_BAD_RESPONSE)
            if block.encoding != ENCODING_IDENTITY:
                raise MuxError("delta-encoded AddChannelResponse", DROP_UNKNOWN_RESPONSE_ENCODING)
            pending.response = block  # under the lock: open_channel() may be giving up right now
            pending.event.set()

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close every channel (closing handshakes, in parallel), then the physical connection."""
        encode_close(code, reason)  # ValueError before any state changes
        if not valid_close_code(code):
            raise ValueError("close code %r may not be sent (RFC 6455 §7.4)" % (code,))
        conns = self.channels
        for conn in conns:
            conn._send_close(code, reason)
        for conn in conns:
            conn._wait_closed()
        self.physical.close(code, reason)
        self._join()

    def abort(self) -> None:
        """Drop the physical connection at once; every channel ends with 1006."""
        self.physical.abort()
        self._join()

    def _join(self) -> None:
        if threading.current_thread() not in (self._reader, self._writer):
            self._reader.join(self.close_timeout)
            self._writer.join(self.close_timeout)

    def __enter__(self) -> "MuxClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect_multiplexed(url: str, multiplex: Optional[Multiplex] = None, channel_class: Type[Connection] = Channel,
                        **kwargs: Any) -> MuxClient:
    """Connect to ``url`` offering only ``mux`` and return the :class:`MuxClient`.

    ``multiplex`` configures the window; ``kwargs`` are those of :func:`twspy.connect`
    (``protocols``, ``origin``, ``headers``, ``ssl``, ``timeout``, ``close_timeout``, ...).
    """
    if "extensions" in kwargs:
        raise TypeError("connect_multiplexed offers mux only; configure it with multiplex=Multiplex(...)")
    factory = functools.partial(MuxClient, channel_class=channel_class)
    mux = connect(url, extensions=[multiplex or Multiplex()], connection_class=factory,  # type: ignore[arg-type]
                  **kwargs)
    return cast(MuxClient, mux)


# -- server ------------------------------------------------------------------------------------

class _ServerSession(_Session):
    """The server end: every logical channel becomes a ``server.connection_class`` client."""

    server_side = True

    def __init__(self, server: "Server", ws: websocket, codec: MultiplexCodec) -> None:
        super().__init__(ws, codec, server.connection_options)
        self.server = server
        self._slots = self.config.max_channels
        self._threads: Set[threading.Thread] = set()
        self._conns: Dict[int, Connection] = {}
        self._delta_base = ws.headers or Headers()
        self._close_deadline: Optional[float] = None

    def run(self) -> None:
        ws = self.ws
        logger.info("%s: multiplexed connection open", _fmt(ws.address))
        try:
            self._writer.start()
            if len(ws.extensions) != 1:
                self._fail_physical(DROP_PHYSICAL_FAILED, "mux must be the only extension")
                return
            # [twspy] §6: slots and our receive quota for channel 1 right after the 101.
            slots = (NewChannelSlot(self._slots, self.window) if self._slots else NewChannelSlot(0, 0, True))
            self._queue_blocks(slots.encode(), FlowControl(1, self.window).encode())
            lsock = self._new_channel(1, ws.path or "/", ws.headers, ws.protocol, self.codec.quota or 0)
            lsock.request = ws.request
            self._start(lsock)
            self._read_loop(_STOP_CHECK)
        finally:
            self._end()
            while True:
                with self._lock:
                    threads = list(self._threads)
                if not threads:
                    break
                for thread in threads:
                    thread.join()
            self._writer.join()
            logger.info("%s: multiplexed connection closed", _fmt(ws.address))

    def _start(self, lsock: ChannelSocket) -> None:
        thread = threading.Thread(target=self._serve_channel, args=(lsock,), daemon=True,
                                  name="twspy-mux-%s-ch%d" % (_fmt(self.ws.address), lsock.channel_id))
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _serve_channel(self, lsock: ChannelSocket) -> None:
        server = self.server
        client: Any = None
        try:
            client = server.connection_class(server, lsock,  # type: ignore[arg-type]
                                             **_channel_options(server.connection_options))
            with server._lock:
                server.clients.add(client)
            with self._lock:
                self._conns[lsock.channel_id] = client
            logger.info("%r: open (mux channel %d)", client, lsock.channel_id)
            if server._stopping:
                client.start_close(server._stop_code, server._stop_reason)
            client.receive_forever()
        except Exception:
            logger.exception("mux channel %d: unexpected error", lsock.channel_id)
            if client is not None:
                client.abort()
        finally:
            lsock.abort()
            if client is not None:
                logger.info("%r: closed %s %s", client, client.close_code, client.close_reason)
                with server._lock:
                    server.clients.discard(client)
            with self._lock:
                self._conns.pop(lsock.channel_id, None)
                self._threads.discard(threading.current_thread())
                idle = not self._channels
            if idle and server._stopping:
                self._begin_close()

    def _begin_close(self) -> None:
        """Server shutdown: once its channels are done, close the physical connection too."""
        with self._lock:
            if self._close_deadline is not None or self._ended:
                return
            self._close_deadline = time.monotonic() + (self.close_timeout or DEFAULT_CLOSE_TIMEOUT)
        self.physical.start_close(self.server._stop_code, self.server._stop_reason)

    def _idle(self) -> None:
        # Server.shutdown() reaches channels through server.clients, not this session: look.
        if self._close_deadline is not None and time.monotonic() > self._close_deadline:
            self.physical.abort()
        elif self.server._stopping:
            with self._lock:
                conns = list(self._conns.values())
                idle = not self._channels
            for conn in conns:
                conn.start_close(self.server._stop_code, self.server._stop_reason)
            if idle:
                self._begin_close()

    def _channel_removed(self, lsock: ChannelSocket) -> None:
        if lsock.channel_id >= 2:
            self._grant_slot()

    def _grant_slot(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._slots += 1
        self._queue_blocks(NewChannelSlot(1, self.window).encode())

    def _on_block(self, block: ControlBlock) -> None:
        if isinstance(block, AddChannelRequest):
            self._on_request(block)
        else:
            super()._on_block(block)

    def _on_request(self, block: AddChannelRequest) -> None:
        cid = block.channel_id
        with self._lock:
            if cid < 2 or cid in self._channels:
                raise MuxError("AddChannelRequest for channel %d, which exists" % cid, DROP_CHANNEL_EXISTS)
            if self._slots <= 0:
                raise MuxError("AddChannelRequest without a channel slot", DROP_SLOT_VIOLATION)
            self._slots -= 1
        ws = self.ws
        try:
            if len(block.handshake) > ws.max_header_size:
                raise HandshakeError("handshake of %d bytes" % len(block.handshake), 431)
            request = parse_request(block.handshake)
            if block.encoding == ENCODING_DELTA:
                request = Request(request.method, request.path, request.version,
                                  _apply_delta(self._delta_base, request.headers))
            # The handshake omits what mux implies (§5.1): validate it as a full upgrade request.
            implied = ("upgrade", "sec-websocket-key", "sec-websocket-version")
            check = Headers([(k, v) for k, v in request.headers.items() if k.lower() not in implied])
            check.add("Upgrade", "websocket")
            check.add("Sec-WebSocket-Key", make_key())
            check.add("Sec-WebSocket-Version", "13")
            _, protocol, _ = server_handshake(Request(request.method, request.path, request.version, check),
                                              ws.protocols, (), ws.trusted_origins, ws.locations,
                                              ws.select_subprotocol)
            if self.server._stopping:
                raise HandshakeError("shutting down", 503)
            # The server's request hooks (process_request, filters' on_connect) see every channel.
            request = Request(request.method, request.path, request.version, request.headers, ws.address)
            answer = ws._process_request(request)
            if answer is not None:
                logger.info("%s: mux channel %d answered %d by process_request", _fmt(ws.address), cid, answer[0])
                self._queue_blocks(AddChannelResponse(cid, answer[1], rejected=True).encode())
                self._grant_slot()
                return
        except HandshakeError as exc:
            logger.info("%s: mux channel %d refused: %s", _fmt(ws.address), cid, exc)
            self._queue_blocks(AddChannelResponse(cid, _status_head(exc.status or 400), rejected=True).encode())
            self._grant_slot()
            return
        if block.encoding == ENCODING_IDENTITY:
            self._delta_base = request.headers
        lsock = self._new_channel(cid, request.path, request.headers, protocol, 0)
        lsock.request = request
        self._queue_blocks(AddChannelResponse(cid, _accept_head(protocol)).encode())
        self._start(lsock)


def serve_multiplexed(server: "Server", ws: websocket) -> None:
    """Serve a client that negotiated ``mux`` (called by Server in the client's thread).

    Each logical channel, the default channel 1 included, becomes a
    ``server.connection_class`` client in ``server.clients``, served by a thread of its own
    that runs ``receive_forever``. Returns when the physical connection and every channel
    have ended.
    """
    codec = next(c for c in ws.extensions if isinstance(c, MultiplexCodec))
    _ServerSession(server, ws, codec).run()


# -- helpers -----------------------------------------------------------------------------------

def _channel_options(options: Mapping[str, Any]) -> Dict[str, Any]:
    """Connection options for a channel: keepalive belongs to the physical connection (a ping
    waiting for send quota would hold up the process-wide watchdog thread)."""
    return {**options, "ping_interval": None, "ping_timeout": None}


def _host_of(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return "[%s]:%s" % (host, address[1]) if ":" in host else "%s:%s" % (host, address[1])
    return "localhost"


_fmt = _host_of
