"""The exceptions twspy raises.

Every exception derives from :class:`WebSocketError`::

    WebSocketError
    ├── HandshakeError          the opening handshake failed (carries an HTTP status)
    │   ├── NegotiationError    an extension or subprotocol answer is unacceptable
    │   └── RedirectError       a redirect the client refuses (wss:// to ws://, too many)
    ├── ProxyError              a proxy refused or broke the tunnel (also ConnectionError)
    ├── ProtocolError           the peer broke RFC 6455 (carries the close code to send)
    │   └── PayloadTooBig       a frame or message exceeds ``max_size`` (1009)
    ├── ConnectionClosed        the connection is closed (code, reason); alias SocketClosed
    ├── InvalidState            an operation that the state does not allow (also RuntimeError)
    └── InvalidURI              a URL that is not ws:// or wss:// (also ValueError)

Timeouts raise the builtin :class:`TimeoutError`.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "WebSocketError",
    "HandshakeError",
    "NegotiationError",
    "RedirectError",
    "ProxyError",
    "ProtocolError",
    "PayloadTooBig",
    "ConnectionClosed",
    "SocketClosed",
    "InvalidState",
    "InvalidURI",
]


class WebSocketError(Exception):
    """Root of every twspy exception."""


class HandshakeError(WebSocketError):
    """The opening handshake failed.

    On the server, ``status`` is the HTTP status sent back (400, 403, 426, ...).
    On the client, ``status``, ``headers`` and ``body`` are what the server answered
    (``status`` is None when the failure was ours, e.g. a bad Sec-WebSocket-Accept).
    """

    def __init__(self, message: str, status: Optional[int] = None,
                 headers: Optional[object] = None, body: bytes = b"",
                 extra_headers: tuple = ()) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers
        self.body = body
        self.extra_headers = extra_headers  # server side: headers for the HTTP error reply

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return "%s (HTTP %d)" % (self.message, self.status)


class NegotiationError(HandshakeError):
    """An extension or subprotocol offer/answer is malformed or unacceptable."""


class RedirectError(HandshakeError):
    """A redirect the client refuses to follow: a wss:// to ws:// downgrade, or too many."""


class ProxyError(WebSocketError, ConnectionError):
    """An HTTP or SOCKS proxy refused the tunnel, closed it, or answered something malformed.

    ``proxy`` is the proxy's URL without credentials; ``status`` and ``reason`` are its answer
    (an HTTP status such as 407, or a SOCKS reply code) when it gave one, else None. Also a
    ConnectionError: code that handles "could not connect" handles it too.
    """

    def __init__(self, message: str, proxy: str = "", status: Optional[int] = None, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.proxy = proxy
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # type: ignore[override]
        return type(self), (self.message, self.proxy, self.status, self.reason)


class ProtocolError(WebSocketError):
    """The peer violated the protocol; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return "%s (close code %d)" % (self.message, self.code)


class PayloadTooBig(ProtocolError):
    """A frame or (inflated) message is larger than the configured ``max_size``."""

    def __init__(self, message: str, code: int = 1009) -> None:
        super().__init__(message, code)


class ConnectionClosed(WebSocketError):
    """The connection is closed; ``code`` and ``reason`` are the close status.

    ``code`` is the code of the peer's close frame, 1005 if it had none and 1006 if the
    connection ended without a close frame (RFC 6455 §7.1.5).
    """

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        if self.reason:
            return "connection closed: %d %s" % (self.code, self.reason)
        return "connection closed: %d" % self.code


SocketClosed = ConnectionClosed  # the original library's name


class InvalidState(WebSocketError, RuntimeError):
    """The operation is not allowed in the current state (e.g. send before the handshake)."""


class InvalidURI(WebSocketError, ValueError):
    """The URL is not a valid ws:// or wss:// URL."""

    def __init__(self, uri: str, why: str) -> None:
        super().__init__("%s isn't a valid WebSocket URI: %s" % (uri, why))
        self.uri = uri
        self.why = why

    def __reduce__(self):  # type: ignore[override]
        # ``args`` holds the formatted message, not (uri, why): without this, copy.copy()
        # and pickle (e.g. across multiprocessing) fail with a TypeError.
        return type(self), (self.uri, self.why)
