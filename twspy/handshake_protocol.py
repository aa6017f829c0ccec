"""The opening handshake, sans I/O (RFC 6455 §4): protocols that start ``CONNECTING``.

:class:`ServerProtocol` reads the upgrade request and answers it; :class:`ClientProtocol`
sends the request and checks the answer. Both then go on as the :class:`~twspy.protocol.Protocol`
they are: the bytes that follow the handshake are frames. The HTTP grammar and the checks
are :mod:`twspy.handshake`'s; this module only runs them in order over received bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Callable

from . import protocol as core
from .errors import HandshakeError, InvalidState, NegotiationError
from .extension import Extension
from .frame import CLOSE_MISSING_EXTENSIONS, encode_close, mask
from .handshake import (
    MAX_HEADER_SIZE,
    Reply,
    Request,
    Response,
    build_request,
    build_response,
    check_response,
    error_response,
    make_key,
    parse_request,
    parse_response,
    run_request_hook,
    server_handshake,
)
from .protocol import (
    CLIENT,
    CONNECTING,
    DEFAULT_MAX_FRAGMENTS,
    DEFAULT_MAX_SIZE,
    SERVER,
    Protocol,
    frame_header,
    short_reason,
)

__all__ = ["ServerProtocol", "ClientProtocol"]


class ServerProtocol(Protocol):
    """The server side, from the upgrade request on (§4.2).

    Feed the request's bytes to :meth:`receive_data`: once the head is complete it is
    parsed (a :class:`~twspy.handshake.Request` event), given to ``process_request``, checked
    and answered: ``101`` (state OPEN; frames that followed the request are processed) or an
    HTTP error reply followed by ``b""`` (state CLOSED, ``handshake_exc`` set) — 400 for a
    malformed request, 405, 426 for a missing upgrade or a bad version, 403 for an origin or
    location refused, 431 for a head over ``max_header_size``, 500 when a hook raised, or
    what ``process_request`` answered. :meth:`reject` answers an error before that (a 503
    when the server is full).

    Args:
        protocols, extensions, trusted_origins, locations, select_subprotocol, process_request, max_header_size:
            as :class:`~twspy.websocket.websocket` has them.
        address: the peer's address, set on the request before ``process_request`` sees it.
        max_size, max_fragments, logger: as :class:`Protocol`.
        keep_rest: leave the bytes that follow the head in :attr:`rest` instead of parsing
            them as frames (for a shell with a frame parser of its own: the socket-level
            :class:`~twspy.websocket.websocket`).
    """

    def __init__(self, *, protocols: Sequence[str] = (), extensions: Sequence[Extension] = (),
                 trusted_origins: Sequence[str] = (), locations: Sequence[str] = (),
                 select_subprotocol: Callable[[list[str], Sequence[str]], str | None] | None = None,
                 process_request: Callable[[Request], Reply] | None = None,
                 max_header_size: int = MAX_HEADER_SIZE, address: Any = None,
                 max_size: int | None = DEFAULT_MAX_SIZE, max_fragments: int | None = DEFAULT_MAX_FRAGMENTS,
                 logger: logging.Logger | None = None, keep_rest: bool = False) -> None:
        super().__init__(SERVER, state=CONNECTING, max_size=max_size, max_fragments=max_fragments, logger=logger)
        self.keep_rest = keep_rest
        self.rest = b""  # with keep_rest: the bytes that followed the head
        self.protocols = list(protocols)
        self.extension_offers = list(extensions)
        self.trusted_origins = list(trusted_origins)
        self.locations = list(locations)
        self.select_subprotocol = select_subprotocol
        self.process_request = process_request
        self.max_header_size = max_header_size
        self.address = address
        self.request: Request | None = None
        self.subprotocol: str | None = None

    def reject(self, status: int, body: str | bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> None:
        """Answer the handshake with an HTTP error (e.g. 503 when full) and end the connection."""
        if self.state is not CONNECTING:
            raise InvalidState("the opening handshake is over")
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.handshake_failed(HandshakeError("rejected with HTTP %d" % status, status),
                               build_response(status, headers, body))

    def _receive_head(self, data: bytes | bytearray) -> None:
        try:
            head = self.find_head(data, self.max_header_size)
            if head is None:
                return
            request = parse_request(head)
            request.address = self.address
            self.request = request
            self.queue_event(request)
            answer = self._process_request(request)
            if answer is not None:
                self.handshake_failed(HandshakeError("answered by process_request", answer[0]), answer[1])
                return
            try:
                response, self.subprotocol, codecs = server_handshake(
                    request, self.protocols, self.extension_offers, self.trusted_origins, self.locations,
                    self.select_subprotocol)
            except HandshakeError:
                raise
            except (Exception, SystemExit) as exc:  # a select_subprotocol or an extension that raised
                self.logger.error("opening handshake failed for %r", request, exc_info=exc)
                raise HandshakeError("internal server error", 500) from exc
        except HandshakeError as exc:
            self.handshake_failed(exc, error_response(exc))
            return
        self.queue_bytes(response)
        self.rest = self.handshake_succeeded(codecs, self.keep_rest)

    def _process_request(self, request: Request) -> tuple[int, bytes] | None:
        return run_request_hook(self.process_request, request, self.logger)


class ClientProtocol(Protocol):
    """The client side, from the upgrade request on (§4.1).

    The request is queued at once (:meth:`data_to_send`). Feed the server's answer to
    :meth:`receive_data`: a ``101`` that checks out opens the connection (a
    :class:`~twspy.handshake.Response` event, then frames); any other status, read with its
    body (up to ``max_header_size`` bytes, or until EOF), ends it with ``handshake_exc`` a
    HandshakeError carrying status, headers and body. An extension or subprotocol answer we
    cannot accept sends a close frame with 1010 (§7.4.1) and sets a NegotiationError.

    Args:
        host: the Host header.
        location: the resource requested ("/path?query").
        origin, protocols, extensions, headers, max_header_size: as
            :class:`~twspy.websocket.websocket` has them.
        key: the Sec-WebSocket-Key (fresh by default).
        max_size, max_fragments, logger: as :class:`Protocol`.
        keep_rest: as :class:`ServerProtocol` has it.
    """

    def __init__(self, *, host: str, location: str = "/", origin: str | None = None,
                 protocols: Sequence[str] = (), extensions: Sequence[Extension] = (),
                 headers: Sequence[tuple[str, str]] = (), key: str | None = None,
                 max_header_size: int = MAX_HEADER_SIZE, max_size: int | None = DEFAULT_MAX_SIZE,
                 max_fragments: int | None = DEFAULT_MAX_FRAGMENTS, logger: logging.Logger | None = None,
                 keep_rest: bool = False) -> None:
        super().__init__(CLIENT, state=CONNECTING, max_size=max_size, max_fragments=max_fragments, logger=logger)
        self.keep_rest = keep_rest
        self.rest = b""  # with keep_rest: the bytes that followed the head
        self.protocols = list(protocols)
        self.extension_offers = list(extensions)
        self.max_header_size = max_header_size
        self.key = key if key is not None else make_key()
        self.response: Response | None = None
        self.subprotocol: str | None = None
        self._body_wanted = -1  # the length of a non-101 response's body still being read
        self.queue_bytes(build_request(host, location, self.key, origin, self.protocols, self.extension_offers,
                                       headers))

    def _receive_head(self, data: bytes | bytearray) -> None:
        if self._body_wanted >= 0:
            self.buffered().extend(data)
            self._read_body()
            return
        try:
            head = self.find_head(data, self.max_header_size)
            if head is None:
                return
            response = parse_response(head)
        except HandshakeError as exc:
            self.handshake_failed(exc)
            return
        self.response = response
        if response.status != 101:
            try:
                length = int(response.headers.get("Content-Length") or 0)
            except ValueError:
                length = 0
            self._body_wanted = max(0, min(length, self.max_header_size))
            self._read_body()
            return
        try:
            self.subprotocol, codecs = check_response(response, self.key, self.protocols, self.extension_offers)
        except NegotiationError as exc:
            exc.status, exc.headers = response.status, response.headers
            # RFC 7692 §5.1 / RFC 6455 §7.4.1: tell the server why before leaving (1010).
            key = core.new_masking_key()
            payload = encode_close(CLOSE_MISSING_EXTENSIONS, short_reason(exc.message))
            self.queue_bytes(frame_header(0x88, len(payload), 0x80) + key + mask(key, payload))
            self.handshake_failed(exc)
            return
        except HandshakeError as exc:
            self.handshake_failed(exc)
            return
        self.queue_event(response)
        self.rest = self.handshake_succeeded(codecs, self.keep_rest)

    def _read_body(self, eof: bool = False) -> None:
        """Finish a non-101 answer once its body is here (or the server closed TCP)."""
        buf = self.buffered()
        if len(buf) < self._body_wanted and not eof:
            return
        response = self.response
        assert response is not None
        response.body = bytes(buf[:self._body_wanted])
        self.queue_event(response)
        self.handshake_failed(HandshakeError("server answered %d %s" % (response.status, response.reason),
                                              response.status, response.headers, response.body))

    def _eof_in_handshake(self) -> bool:
        if self._body_wanted >= 0:
            self._read_body(eof=True)
            return True
        return super()._eof_in_handshake()
