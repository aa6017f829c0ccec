"""The exceptions twspy raises.

Every exception derives from :class:`WebSocketError`::

    WebSocketError
    ├── HandshakeError          the opening handshake failed (carries an HTTP status)
    │   ├── NegotiationError    an extension or subprotocol answer is unacceptable
    │   └── RedirectError       a redirect the client refuses (wss:// to ws://, too many)
    ├── ProxyError              a proxy refused or broke the tunnel (also ConnectionError)
    ├── ProtocolError           the peer broke RFC 6455 (carries the close code to send)
    │   ├── PayloadTooBig       a frame or message exceeds ``max_size`` (1009)
    │   └── MuxError            the peer broke the multiplexing extension (a drop reason code)
    ├── ConnectionClosed        the connection is closed (code, reason); alias SocketClosed
    │   ├── ConnectionClosedOK      ... normally: 1000 or 1001 (also 1005, a close without a code)
    │   └── ConnectionClosedError   ... otherwise: 1006 (no closing handshake), 1002, 1009, 1011, ...
    ├── InvalidState            an operation that the state does not allow (also RuntimeError)
    ├── InvalidURI              a URL that is not ws:// or wss:// (also ValueError)
    ├── Reject                  raised by a server filter to close its client (code, reason)
    ├── InvalidTopic            a hub topic name or filter that breaks MQTT §4.7 (also ValueError)
    ├── SubscriptionLimit       a subscription past the hub's limits (also ValueError)
    └── HubError                a hub or broker cannot do what was asked
        └── BrokerUnavailable   the broker cannot be reached right now (also ConnectionError)

Timeouts raise the builtin :class:`TimeoutError`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "WebSocketError",
    "HandshakeError",
    "NegotiationError",
    "RedirectError",
    "ProxyError",
    "ProtocolError",
    "PayloadTooBig",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "SocketClosed",
    "InvalidState",
    "InvalidURI",
    "MuxError",
    "Reject",
    "InvalidTopic",
    "SubscriptionLimit",
    "HubError",
    "BrokerUnavailable",
]


# RFC 6455 §7.4: the codes a close frame may carry (1005, 1006 and 1015 are never sent). Here,
# at the bottom of the package, so that both the frame codec and Reject use it.
_WIRE_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))


def valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame on the wire (§7.4)."""
    return code in _WIRE_CLOSE_CODES or 3000 <= code <= 4999


class WebSocketError(Exception):
    """Root of every twspy exception."""


class HandshakeError(WebSocketError):
    """The opening handshake failed.

    On the server, ``status`` is the HTTP status sent back (400, 403, 426, ...).
    On the client, ``status``, ``headers`` and ``body`` are what the server answered
    (``status`` is None when the failure was ours, e.g. a bad Sec-WebSocket-Accept).
    """

    def __init__(self, message: str, status: int | None = None,
                 headers: object | None = None, body: bytes = b"",
                 extra_headers: tuple[tuple[str, str], ...] = ()) -> None:
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

    def __init__(self, message: str, proxy: str = "", status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.proxy = proxy
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
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


class ConnectionClosedOK(ConnectionClosed):
    """The connection closed normally: close code 1000 (normal), 1001 (going away) or
    1005 (a close frame without a code)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection closed with an error: 1006 (no closing handshake), or a close code
    that reports a problem (1002 protocol error, 1009 too big, 1011, ...).

    ``cause`` is the error that made us close, when we did (e.g. a :class:`PayloadTooBig`
    for 1009, a :class:`ProtocolError` for 1002/1007); None when the peer chose the code.
    """

    def __init__(self, code: int = 1006, reason: str = "", cause: BaseException | None = None) -> None:
        super().__init__(code, reason)
        self.cause = cause


_OK_CODES = frozenset((1000, 1001, 1005))


def closed_error(code: int, reason: str = "", cause: BaseException | None = None) -> ConnectionClosed:
    """The ConnectionClosed subclass for ``code``: ConnectionClosedOK or ConnectionClosedError
    (whose ``__cause__`` is also ``cause``, so a traceback shows it)."""
    if code in _OK_CODES:
        return ConnectionClosedOK(code, reason)
    error = ConnectionClosedError(code, reason, cause)
    error.__cause__ = cause
    return error


SocketClosed = ConnectionClosed  # the original library's name


class InvalidState(WebSocketError, RuntimeError):
    """The operation is not allowed in the current state (e.g. send before the handshake)."""


class InvalidURI(WebSocketError, ValueError):
    """The URL is not a valid ws:// or wss:// URL."""

    def __init__(self, uri: str, why: str) -> None:
        super().__init__("%s isn't a valid WebSocket URI: %s" % (uri, why))
        self.uri = uri
        self.why = why

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        # ``args`` holds the formatted message, not (uri, why): without this, copy.copy()
        # and pickle (e.g. across multiprocessing) fail with a TypeError.
        return type(self), (self.uri, self.why)


class MuxError(ProtocolError):
    """The peer broke the multiplexing protocol; ``code`` is the drop reason code (§7.1).

    2000-2999 fail the physical connection, 3000-3999 one logical channel.
    """


class Reject(WebSocketError):
    """Raised by a filter to close the client with ``code`` and ``reason``.

    ``code`` must be one a close frame may carry (RFC 6455 §7.4: 1000-1003, 1007-1014,
    3000-4999); ValueError otherwise. ``reason`` is cut to 123 bytes of UTF-8 on the wire.
    """

    def __init__(self, code: int = 1008, reason: str = "") -> None:
        if not isinstance(code, int) or not valid_close_code(code):
            raise ValueError("close code %r may not be sent (RFC 6455 §7.4)" % (code,))
        super().__init__(reason or "rejected")
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return "rejected with %d %s" % (self.code, self.reason)

    def __reduce__(self) -> tuple[Any, tuple[int, str]]:
        # ``args`` holds the message, not (code, reason): copy and pickle need the real ones.
        return type(self), (self.code, self.reason)


class InvalidTopic(WebSocketError, ValueError):
    """A topic name or topic filter that breaks MQTT §4.7."""

    def __init__(self, topic: str, why: str) -> None:
        shown = topic if len(topic) <= 80 else topic[:77] + "..."
        super().__init__("%r isn't a valid topic: %s" % (shown, why))
        self.topic = topic
        self.why = why

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        # ``args`` holds the formatted message, not (topic, why); see InvalidURI.
        return type(self), (self.topic, self.why)


class SubscriptionLimit(WebSocketError, ValueError):
    """A subscription that a :class:`~twspy.topics.SubscriptionTree`'s limits refuse (too many
    levels, too many filters for one key, or no node budget left)."""


class HubError(WebSocketError):
    """A hub or broker cannot do what was asked (bad broker URL, missing ``redis`` package, ...)."""


class BrokerUnavailable(HubError, ConnectionError):
    """The broker cannot be reached right now; the hub retries with backoff."""
