"""The socket-like end point: handshakes, then whole frames in and out.

A :class:`websocket` wraps a ``socket.socket`` (and forwards its methods). A server
``bind``s, ``listen``s and ``accept``s (the handshake runs inside ``accept``); a client
``connect``s. Then ``send(*frames)`` and ``recv() -> Frame`` (raw frames: encoded and
decoded by a :class:`~twspy.protocol.Protocol`, which masks by side and runs per-frame
extensions), or :meth:`websocket.read_bytes` for a shell that feeds a protocol core
(:class:`~twspy.connection.Connection`). It owns the socket, TLS, the receive buffer and
the waiting; no protocol rule lives here.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import socket
import ssl as _ssl
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable

from .deprecation import keyword_only
from .errors import ConnectionClosed, InvalidState, NegotiationError
from .extension import Extension, ExtensionCodec
from .frame import Frame, FrameParser, mask_join, new_frame
from .handshake import MAX_HEADER_SIZE, Headers, Reply, Request, basic_auth, run_request_hook
from .handshake_protocol import ClientProtocol, ServerProtocol
from .protocol import CLIENT, CONNECTING, SERVER, Protocol

__all__ = ["websocket", "DEFAULT_MAX_SIZE", "DEFAULT_HANDSHAKE_TIMEOUT"]

logger = logging.getLogger("twspy.websocket")

DEFAULT_MAX_SIZE = 1 << 20          # 1 MiB per frame and per message, as python-websockets
DEFAULT_HANDSHAKE_TIMEOUT = 10.0    # seconds for TLS + HTTP upgrade
DEFAULT_WRITE_TIMEOUT = 30.0        # seconds a send may make no progress
_RECV_SIZE = 64 * 1024              # one read can carry many small frames
_LARGE = 256 * 1024                 # payloads from this size are read straight into their buffer
_SENDMSG = hasattr(socket.socket, "sendmsg")  # gathered writes (not on Windows)
_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_poll = getattr(select, "poll", None)  # poll() has no FD_SETSIZE limit, unlike select()


class websocket:
    """A WebSocket end point with the socket API.

    Args:
        sock: an existing socket to wrap (a new TCP socket of ``family`` by default).
        origin: client: the Origin header to send.
        protocols: client: subprotocols to offer; server: subprotocols supported.
        extensions: :class:`~twspy.extension.Extension` instances to offer/accept.
        location: client: the resource (path and query) to request.
        trusted_origins: server: accepted Origin values (empty: any); others get 403.
        locations: server: served paths (empty: any); others get 403.
        auth: client: ``(user, password)`` sent as Basic auth.
        ssl: an ``ssl.SSLContext`` (server: wraps accepted sockets; client: wraps on
            connect; ``True`` for ``ssl.create_default_context()``).
        host: client: the Host header (default: from the address).
        headers: client: extra request headers as ``(name, value)`` pairs.
        max_size: largest frame payload accepted (1009 beyond); None for no limit.
        max_header_size: largest HTTP head accepted (431 beyond).
        handshake_timeout: seconds for the TLS and HTTP handshakes.
        select_subprotocol: server: ``f(client_protocols, server_protocols)`` picking one.
        process_request: server: ``f(request)`` called with the parsed
            :class:`~twspy.handshake.Request` before the upgrade is checked; it returns None to
            go on or an HTTP answer (:data:`~twspy.handshake.Reply`: a status, ``(status, body)``,
            ``(status, headers, body)``) that is sent instead of the upgrade (health checks,
            401, 502, ...). HandshakeError raised in it answers its status; another exception 500.
        write_timeout: a send that makes no progress for this long fails the connection
            (a peer that never reads cannot pin a thread); None for no limit.
    """

    @keyword_only(2)
    def __init__(self, sock: socket.socket | None = None, *, origin: str | None = None,
                 protocols: Sequence[str] = (), extensions: Sequence[Extension] = (),
                 location: str = "/", trusted_origins: Sequence[str] = (), locations: Sequence[str] = (),
                 auth: tuple[str, str] | None = None, ssl: None | bool | _ssl.SSLContext = None,
                 host: str | None = None, headers: Sequence[tuple[str, str]] = (),
                 max_size: int | None = DEFAULT_MAX_SIZE, max_header_size: int = MAX_HEADER_SIZE,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
                 select_subprotocol: Callable[[list[str], Sequence[str]], str | None] | None = None,
                 family: int = socket.AF_INET, server_hostname: str | None = None,
                 write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
                 process_request: Callable[[Request], Reply] | None = None) -> None:
        self.sock = sock if sock is not None else socket.socket(family, socket.SOCK_STREAM)
        self.origin = origin
        self.protocols = list(protocols)
        self.extension_offers = list(extensions)
        self.location = location
        self.trusted_origins = list(trusted_origins)
        self.locations = list(locations)
        self.auth = auth
        self.ssl = _ssl.create_default_context() if ssl is True else (ssl or None)
        self.host = host
        self.request_headers_extra = list(headers)
        self.max_size = max_size
        self.max_header_size = max_header_size
        self.handshake_timeout = handshake_timeout
        self.select_subprotocol = select_subprotocol
        self.server_hostname = server_hostname
        self.write_timeout = write_timeout
        self.process_request = process_request

        self.server_side: bool | None = None   # None until accept()/connect()
        self.handshake_done = False
        self.protocol: str | None = None       # negotiated subprotocol
        self.extensions: list[ExtensionCodec] = []  # negotiated codecs, order of application
        self.path: str | None = None           # server: request target; client: location
        self.headers: Headers | None = None    # server: request headers; client: response headers
        self.request: Request | None = None    # server: the upgrade request
        self.address: Any = None                  # peer address
        self.send_lock = threading.Lock()         # one whole frame (or message) at a time
        # The raw-frame API's core (set once the handshake is done): encodes frames (masking
        # by side, per-frame extensions) for send() and decodes per-frame extensions for recv().
        self.core: Protocol | None = None
        self._parser = FrameParser(max_size)
        self._frame_codecs: list[ExtensionCodec] = []
        self._mask_out = False
        # a large frame being read: b0, key, its chunks (allocated as bytes arrive), bytes received, length
        self._large: tuple[int, bytes | None, list[bytearray], int, int] | None = None
        self._poller: selectors.BaseSelector | None = None
        self._wait_lock = threading.Lock()  # abort() vs a reader in select() (see abort)
        self._waiting = False
        self._close_on_wake = False
        self._aborted = False  # set by abort(): a reader about to select() must not sleep on a closed fd

    # -- socket API ---------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Forward the rest of the socket API (bind, listen, fileno, setsockopt, ...).
        if name == "sock":
            raise AttributeError(name)
        return getattr(self.sock, name)

    def bind(self, address: Any) -> None:
        """Bind the socket; on POSIX a TCP socket gets ``SO_REUSEADDR`` first, so a server can
        listen again on its port at once after a restart (connections of the old one in
        TIME_WAIT would block it for a minute). Not on Windows, where it lets another
        process take a port in use."""
        if os.name == "posix" and self.sock.family in (socket.AF_INET, socket.AF_INET6):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)

    def listen(self, backlog: int = 128) -> None:
        self.sock.listen(backlog)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket (no close handshake: that is Connection.close())."""
        try:
            self.sock.close()
        finally:
            self.close_poller()
            for codec in self.extensions:
                codec.close()

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def __enter__(self) -> websocket:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        role = {None: "unconnected", True: "server", False: "client"}[self.server_side]
        try:
            fd = self.sock.fileno()
        except OSError:  # pragma: no cover
            fd = -1
        return "<twspy.websocket %s fd=%d path=%r>" % (role, fd, self.path)

    # -- server -------------------------------------------------------------------------------
    def child(self, sock: socket.socket) -> websocket:
        """A websocket for an accepted ``sock`` with this listening one's server options."""
        return websocket(sock, protocols=self.protocols, extensions=self.extension_offers,
                         trusted_origins=self.trusted_origins, locations=self.locations, ssl=self.ssl,
                         max_size=self.max_size, max_header_size=self.max_header_size,
                         handshake_timeout=self.handshake_timeout, select_subprotocol=self.select_subprotocol,
                         write_timeout=self.write_timeout, process_request=self.process_request)

    def accept(self, handshake: bool = True) -> tuple[websocket, Any]:
        """Accept a client and run the server handshake: ``(websocket, address)``.

        With ``handshake=False`` the caller runs :meth:`server_handshake` itself (the
        Server does, in the client's own thread). A failed handshake answers the HTTP
        error, closes the socket and raises HandshakeError.
        """
        sock, address = self.sock.accept()
        client = self.child(sock)
        client.address = address
        client.server_side = True
        if handshake:
            client.server_handshake()
        return client, address

    def server_handshake(self, timeout: float | None = -1.0, received: bytes = b"") -> None:
        """Run TLS (if configured) and the HTTP upgrade as a server, within ``timeout``.

        ``timeout=-1`` means ``handshake_timeout``. ``received``: bytes of the request the
        caller already read from the socket (the Server reads heads in its selector loop).
        Bytes after the request stay buffered. A request hook or ``select_subprotocol``
        that raises is logged and answered 500.
        """
        self.server_side = True
        deadline = _deadline(self.handshake_timeout if timeout == -1.0 else timeout)
        old_timeout = self.sock.gettimeout()
        try:
            if self.ssl is not None and not isinstance(self.sock, _ssl.SSLSocket):
                self.sock.settimeout(_remaining(deadline))
                self.sock = self.ssl.wrap_socket(self.sock, server_side=True)
            # The sans-I/O handshake decides (checks, hooks, the answer); this moves its bytes.
            core = ServerProtocol(protocols=self.protocols, extensions=self.extension_offers,
                                  trusted_origins=self.trusted_origins, locations=self.locations,
                                  select_subprotocol=self.select_subprotocol, process_request=self.process_request,
                                  max_header_size=self.max_header_size, address=self.address,
                                  max_size=self.max_size, max_fragments=None, logger=logger, keep_rest=True)
            data = received
            while True:
                if data:
                    core.receive_data(data)
                if core.state is not CONNECTING:
                    break
                data = self._recv_before(deadline, 4096)
                if not data:
                    raise ConnectionResetError("connection closed during the opening handshake")
            self.request = core.request
            for data in core.data_to_send():
                if data:
                    self._send_before(deadline, data)
            if core.handshake_exc is not None:
                raise core.handshake_exc
        except BaseException:
            self.close()
            raise
        assert self.request is not None
        self.path = self.request.path
        self.headers = self.request.headers
        self.protocol = core.subprotocol
        self.extensions = list(core.extensions)
        self._opened(core.rest, core.side is SERVER, core)
        self.sock.settimeout(old_timeout)

    def answer_request(self, request: Request) -> tuple[int, bytes] | None:
        """Run the ``process_request`` hook: None to go on, or ``(status, HTTP response bytes)``
        (HandshakeError 500 if the hook raised). Also used for each mux channel's request."""
        return run_request_hook(self.process_request, request, logger)

    _process_request = answer_request  # the former private spelling

    # -- client -------------------------------------------------------------------------------
    def connect(self, address: Any) -> None:
        """Connect to ``address`` and run the client handshake for ``location``.

        Raises HandshakeError (with the HTTP status, headers and body when the server
        answered something else than 101) or NegotiationError (after sending close 1010).
        """
        self.server_side = False
        deadline = _deadline(self.handshake_timeout)
        old_timeout = self.sock.gettimeout()
        try:
            self.sock.settimeout(_remaining(deadline))
            self.sock.connect(address)
            self.address = address
            host = self.host or _host_header(address, self.ssl is not None)
            if self.ssl is not None and not isinstance(self.sock, _ssl.SSLSocket):
                # SNI and hostname checking use the name we were asked to reach.
                self.sock = self.ssl.wrap_socket(self.sock, server_hostname=self.server_hostname or address[0])
            self.client_handshake(host, deadline)
        except BaseException:
            self.close()
            raise
        self.sock.settimeout(old_timeout)

    def client_handshake(self, host: str, deadline: float | None = None) -> None:
        """Send the upgrade request over the connected socket and check the answer."""
        self.server_side = False
        headers = list(self.request_headers_extra)
        if self.auth is not None:
            headers.append(("Authorization", basic_auth(*self.auth)))
        core = ClientProtocol(host=host, location=self.location, origin=self.origin, protocols=self.protocols,
                              extensions=self.extension_offers, headers=headers,
                              max_header_size=self.max_header_size, max_size=self.max_size, max_fragments=None,
                              logger=logger, keep_rest=True)
        for data in core.data_to_send():
            self._send_before(deadline, data)
        while core.state is CONNECTING:
            try:
                data = self._recv_before(deadline, 4096)
            except (OSError, TimeoutError):
                if core.response is None:
                    raise
                data = b""  # an error answer's body cut short: report what came
            if not data:
                if core.response is None:
                    raise ConnectionResetError("connection closed during the opening handshake")
                core.receive_eof()
                break
            core.receive_data(data)
        if core.response is not None:  # None: the answer was not HTTP (handshake_exc says why)
            self.headers = core.response.headers
        self.path = self.location
        exc = core.handshake_exc
        if exc is not None:
            if isinstance(exc, NegotiationError):  # tell the server why before leaving (1010)
                try:
                    for data in core.data_to_send():
                        if data:
                            self.sock.sendall(data)
                except OSError:
                    pass
            raise exc
        self.protocol = core.subprotocol
        self.extensions = list(core.extensions)
        self._opened(core.rest, core.side is SERVER, core)

    # -- after the handshake ------------------------------------------------------------------
    def _opened(self, rest: bytes, require_mask: bool, core: Protocol | None = None) -> None:
        """Open with the bytes that followed the handshake (frames, parsed here) and the
        handshake's core, which encodes and decodes frames from now on (a new one by default)."""
        if core is None:
            core = Protocol(SERVER if require_mask else CLIENT, max_size=self.max_size, max_fragments=None,
                            extensions=self.extensions)
        self.handshake_done = True
        self._mask_out = not require_mask
        rsv = 0
        for codec in self.extensions:
            rsv |= codec.rsv
        self._frame_codecs = [c for c in self.extensions if c.per_frame]
        self.core = core
        self._parser = FrameParser(self.max_size, require_mask, rsv)
        if rest:
            self._parser.feed(rest)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # pragma: no cover - not TCP (e.g. a socketpair)
            pass
        if self.write_timeout is not None:
            # SO_SNDTIMEO bounds each blocking send without touching reads (settimeout would).
            seconds = int(self.write_timeout)
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                                     struct.pack("ll", seconds, int((self.write_timeout - seconds) * 1e6)))
            except (OSError, AttributeError, struct.error):  # pragma: no cover - platform without it
                pass

    @property
    def message_codecs(self) -> list[ExtensionCodec]:
        """The negotiated per-message codecs (applied by Connection)."""
        return [c for c in self.extensions if not c.per_frame]

    def send(self, *frames: Frame) -> None:
        """Send whole frames, in order, without interleaving with other threads.

        A client masks every frame with a fresh key; a server never masks (the core's rule).
        """
        if not self.handshake_done:
            raise InvalidState("send() before the opening handshake")
        with self.send_lock:
            for frame in frames:
                self.send_raw(frame.opcode, frame.payload, frame.final, frame.rsv)

    def send_raw(self, opcode: int, payload: bytes, final: bool = True, rsv: int = 0) -> None:
        """Send one frame (per-frame codecs applied, masked on a client); the caller holds ``send_lock``."""
        assert self.core is not None, "send before the opening handshake"
        self.send_pieces(self.core.encode_frame(opcode, payload, final, rsv))

    def send_pieces(self, pieces: list[bytes]) -> None:
        """Write one frame's or message's encoded pieces in order (the core keeps a large payload
        apart from its header, never copied); the caller holds ``send_lock``.

        A header and a large payload go out in one gathered write: no copy of the payload into
        one buffer, and no lone header segment (TCP_NODELAY) that wakes the peer for 10 bytes.
        """
        sock = self.sock
        if len(pieces) == 2 and _SENDMSG and isinstance(sock, socket.socket) \
                and not isinstance(sock, _ssl.SSLSocket):
            header, body = pieces
            sent = sock.sendmsg(pieces)
            if sent < len(header):
                sock.sendall(header[sent:])
                sent = len(header)
            if sent - len(header) < len(body):
                sock.sendall(memoryview(body)[sent - len(header):])
            return
        for piece in pieces:  # TLS (or a socket-like object) has no sendmsg
            sock.sendall(piece)

    # -- the transport interface Connection uses (a mux channel implements the same) ----------
    @property
    def can_share_frames(self) -> bool:
        """Whether frames encoded once can be sent as they are (no masking, no per-frame codec)."""
        return not self._mask_out and not self._frame_codecs

    def frame_bytes(self, opcode: int, payload: bytes, final: bool = True, rsv: int = 0) -> bytes | None:
        """One frame as wire bytes (per-frame codecs applied, masked on a client)."""
        assert self.core is not None, "frame_bytes before the opening handshake"
        return b"".join(self.core.encode_frame(opcode, payload, final, rsv))

    def send_nowait(self, data: bytes) -> int:
        """Send what the socket takes now without blocking; the caller holds ``send_lock``.

        Returns the number of bytes sent, or -1 when the transport cannot (TLS).
        """
        if not _MSG_DONTWAIT or isinstance(self.sock, _ssl.SSLSocket):
            return -1
        try:
            return self.sock.send(data, _MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def half_close(self) -> None:
        """Shut down our sending side (TCP FIN); reading goes on."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def wait_eof(self, deadline: float | None, discard: bool = False) -> None:
        """Read (and drop) until the peer closes TCP or ``deadline`` passes; never raises."""
        if discard:
            self._parser.take_buffer()
            self._large = None
        try:
            while True:
                if deadline is not None:
                    self._wait_readable(deadline)
                if not self.sock.recv(65536):
                    return
        except (OSError, TimeoutError, ValueError, ConnectionClosed):
            return

    def abort(self) -> None:
        """Shut the TCP connection down both ways and close the socket (wakes any reader)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        with self._wait_lock:
            self._aborted = True
            if self._waiting:
                # A reader waits in select(): closing now would drop the wake-up the shutdown
                # just posted (epoll forgets a closed fd) and leave it asleep until its deadline.
                # It closes the socket itself when it wakes.
                self._close_on_wake = True
                return
        self.close()

    def send_frame_bytes(self, data: bytes) -> None:
        """Send already encoded frames (see Connection.prepare); the caller holds ``send_lock``."""
        self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> Frame:
        """Receive one frame (per-frame extensions decoded).

        Raises ProtocolError for a frame that breaks §5 (its ``code`` is the close code to
        send), ConnectionClosed(1006) when the peer closed the TCP connection and
        TimeoutError when ``timeout`` passes first (nothing is lost: call again).
        """
        return self.read_frame(_deadline(timeout))

    def read_frame(self, deadline: float | None = None) -> Frame:
        """:meth:`recv` with an absolute ``time.monotonic()`` deadline."""
        if not self.handshake_done:
            raise InvalidState("recv() before the opening handshake")
        parser = self._parser
        while True:
            if self._large is not None:
                frame = self._recv_large(deadline)
                break
            # An empty buffer (the usual case before a read) needs no parsing attempt.
            parsed = parser.next_frame() if parser.pos < len(parser.buffer) else None
            if parsed is not None:
                frame = parsed
                break
            header = parser.pending_header
            if header is not None and parser.wanted() >= _LARGE:
                # Only what has arrived is allocated: the announced length is a claim, and
                # bytearray(length) for a 15-byte header cost 1 MiB per connection (issue 20).
                b0, length, key, hlen = header
                have = bytearray(parser.take_buffer()[hlen:])
                self._large = (b0, key, [have], len(have), length)
                continue
            if deadline is not None:
                self._wait_readable(deadline)
            self._fill()
        if self._frame_codecs and not frame.is_control:
            assert self.core is not None
            frame = self.core.decode_frame(frame)
        return frame

    def read_bytes(self, deadline: float | None = None) -> bytes:
        """The next bytes from the peer, for a protocol core to parse (Connection feeds
        :class:`~twspy.protocol.Protocol` with them): what is buffered first (bytes that
        followed the handshake, or what :meth:`recv` left), then what one ``recv()`` gives.

        Raises ConnectionClosed(1006) at EOF or a reset, TimeoutError once ``deadline`` (an
        absolute ``time.monotonic()``; None: no limit) passes; nothing is lost then.
        """
        parser = self._parser
        if parser.pos < len(parser.buffer):
            return parser.take_buffer()
        if deadline is not None:
            self._wait_readable(deadline)
        return self._recv_some()

    def pending(self) -> bool:
        """Whether bytes are already buffered (so a poll() on the socket could miss them)."""
        if len(self._parser.buffer) - self._parser.pos or self._large is not None:
            return True
        sock = self.sock
        return isinstance(sock, _ssl.SSLSocket) and sock.pending() > 0

    def readable(self) -> bool:
        """Whether a read would make progress now: a frame may be buffered (ours, TLS's) or
        the kernel has bytes (or EOF). Connection's background reading asks it (never blocks)."""
        parser = self._parser
        if len(parser.buffer) > parser.pos and self._large is None and (parser.pending_header is None
                                                                         or not parser.wanted()):
            return True
        sock = self.sock
        if isinstance(sock, _ssl.SSLSocket) and sock.pending() > 0:
            return True
        try:
            if _poll is not None:
                poller = _poll()
                poller.register(sock, select.POLLIN)
                return bool(poller.poll(0))
            return bool(select.select([sock], [], [], 0)[0])  # pragma: no cover - no poll() (Windows)
        except (OSError, ValueError):  # closed under us: a read reports it
            return True

    def _wait_readable(self, deadline: float) -> None:
        # Only the TLS layer's own buffer counts: bytes in our parser are not a whole frame yet.
        sock = self.sock
        if isinstance(sock, _ssl.SSLSocket) and sock.pending() > 0:
            return
        try:
            if self._poller is None:
                self._poller = selectors.DefaultSelector()
                self._poller.register(self.sock, selectors.EVENT_READ)
        except (ValueError, OSError):  # the socket was closed under us (abort from another thread)
            raise ConnectionClosed(1006, "") from None
        while True:
            left = deadline - time.monotonic()
            with self._wait_lock:
                if self._aborted:
                    # abort() ran before we got here and may have closed the fd: epoll forgets
                    # a closed fd, so select() would sleep until the deadline.
                    raise ConnectionClosed(1006, "")
                self._waiting = True
            try:
                ready = left > 0 and self._poller.select(left)
            except (ValueError, OSError, AttributeError):  # closed meanwhile (poller released)
                raise ConnectionClosed(1006, "") from None
            finally:
                with self._wait_lock:
                    self._waiting = False
                    aborted, self._close_on_wake = self._close_on_wake, False
            if aborted:
                self.close()
                raise ConnectionClosed(1006, "")
            if not ready:
                if deadline - time.monotonic() <= 0:
                    raise TimeoutError("timed out waiting for a frame")
                continue
            return

    def _fill(self) -> None:
        self._parser.feed(self._recv_some())

    def _recv_some(self) -> bytes:
        """What one recv() gives (at least a byte); ConnectionClosed(1006) at EOF or a reset."""
        try:
            # recv() rather than recv_into() a buffer of our own: a resident 256 KiB buffer per
            # connection cost 283 KiB per idle client (bench, scenario d); this costs nothing idle.
            data = self.sock.recv(_RECV_SIZE)
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
            data = b""
        except _ssl.SSLError as exc:
            logger.debug("TLS error while reading: %s", exc)
            data = b""
        if not data:
            raise ConnectionClosed(1006, "")
        return data

    def _recv_large(self, deadline: float | None) -> Frame:
        """Read a large payload straight into buffers of its own; resumable after a timeout.

        Its first _RECV_SIZE bytes come from recv(), which sizes its result to what arrived;
        then chunks that double (each as large as all before it, capped by the announced
        length) are filled with recv_into. What is allocated stays within twice what has
        arrived, so a header that announces a big frame and sends nothing costs nothing
        (issue 20: bytearray(length) cost 1 MiB per 15-byte header), while a real one is still
        copied once after the kernel (the final join).
        """
        b0, key, chunks, got, length = self._large  # type: ignore[misc]
        chunk = chunks[-1]
        start = sum(len(c) for c in chunks) - len(chunk)  # where the last chunk begins in the payload
        while got < length:
            if deadline is not None:
                self._wait_readable(deadline)
            if got < _RECV_SIZE:  # the first bytes: recv() sizes its result to what arrived
                try:
                    data = self.sock.recv(min(length, _RECV_SIZE) - got)
                except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                    data = b""
                chunk += data
                n = len(data)
            else:
                if got - start == len(chunk):  # full: start the next
                    start, chunk = got, bytearray(min(length - got, got))
                    chunks.append(chunk)
                with memoryview(chunk) as view:
                    try:
                        n = self.sock.recv_into(view[got - start:], min(len(chunk) - (got - start), 4 << 20))
                    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                        n = 0
            if not n:
                self._large = None
                raise ConnectionClosed(1006, "")
            got += n
            self._large = (b0, key, chunks, got, length)
        self._large = None
        # Unmasked and joined in one pass (§5.3: the key's phase runs on across the chunks).
        return new_frame(b0, mask_join(key, chunks) if key is not None else b"".join(chunks), key)

    def close_poller(self) -> None:
        if self._poller is not None:
            self._poller.close()
            self._poller = None

    # -- handshake I/O with a deadline ------------------------------------------------------
    def _recv_before(self, deadline: float | None, n: int) -> bytes:
        self.sock.settimeout(_remaining(deadline))
        try:
            return self.sock.recv(n)
        except socket.timeout:
            raise TimeoutError("opening handshake timed out") from None

    def _send_before(self, deadline: float | None, data: bytes) -> None:
        try:
            self.sock.settimeout(_remaining(deadline))
            self.sock.sendall(data)
        except socket.timeout:
            raise TimeoutError("opening handshake timed out") from None
        except OSError:
            # A client that left while we answer its bad request: nothing more to tell it.
            if not (self.server_side and not data.startswith(b"HTTP/1.1 101")):
                raise


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("opening handshake timed out")
    return left


def _host_header(address: Any, secure: bool) -> str:
    host, port = str(address[0]), address[1]
    if ":" in host:
        host = "[%s]" % host
    if port == (443 if secure else 80):
        return host
    return "%s:%d" % (host, port)
