"""Filter chains: a server composed from small objects instead of a subclass.

A filter has any of these methods (all optional; :class:`Filter` has no-op defaults), and a
:class:`~twspy.server.Server` runs them in list order, before its own handlers::

    on_connect(request)                 before the upgrade; None to go on, or an HTTP reply
                                        (status, (status, body), (status, headers, body))
                                        sent instead, e.g. 401; the first reply wins
    on_open(client)                     the handshake is done
    on_message(client, message)         return the message (or a new one, str or bytes) for
                                        the next filter; None to drop it (a filter that
                                        answers sends with client.send and returns None)
    on_close(client, code, reason)      every filter, exactly once per opened client

An exception in ``on_open``/``on_message`` stops the chain and closes that client:
:class:`Reject` with its code, :class:`~twspy.errors.ProtocolError` with its code,
``PermissionError`` with 1008 (policy violation), anything else with 1011 (logged with its
traceback). Nothing more from that client goes through the chain or reaches the server's
``onopen``/``onmessage`` (``on_close`` still runs for every filter). In ``on_connect``,
:class:`~twspy.errors.HandshakeError` answers its status and anything else 500. Exceptions
in ``on_close`` are logged.

Bundled: :class:`Echo`, :class:`Broadcast`, :class:`Log`, :class:`BearerAuth`; the hub's
topic protocol is :class:`twspy.hub.TopicBroadcast`.
"""

from __future__ import annotations

import hmac
import logging
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, Union
from urllib.parse import parse_qsl, unquote_plus, urlsplit

from .errors import ConnectionClosed, ProtocolError, Reject
from .frame import CLOSE_POLICY, CLOSE_UNABLE, short_reason, valid_close_code
from .handshake import Reply, Request
from .message import BinaryMessage, Message, TextMessage

__all__ = ["Filter", "Reject", "Echo", "Broadcast", "Log", "BearerAuth", "MessageResult", "close_code_for",
           "redact_query", "run_connect", "run_open", "run_message", "run_close"]

logger = logging.getLogger("twspy.filters")

MessageResult = Union[None, Message, str, bytes]
"""What ``on_message`` returns: the message to pass on (a str or bytes becomes a text or
binary message), or None to drop it."""

_FAILED = "_twspy_filter_failed"  # set on a client once a filter closed it: the chain skips it


class Filter:
    """Base class with no-op hooks; subclass and override the ones you need.

    ``from_options(options)`` builds a filter from the command line's options (a dict of
    the long option names, plus the JSON config's keys): override it when the filter takes
    settings.
    """

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Filter:
        return cls()

    def on_connect(self, request: Request) -> Reply:
        return None

    def on_open(self, client: Any) -> None:
        pass

    def on_message(self, client: Any, message: Message) -> MessageResult:
        return message

    def on_close(self, client: Any, code: int, reason: str) -> None:
        pass

    def __repr__(self) -> str:
        return "<filter %s>" % type(self).__name__


class Echo(Filter):
    """Send every message back to its sender (and pass it on)."""

    def on_message(self, client: Any, message: Message) -> MessageResult:
        client.send(message)
        return message


class Broadcast(Filter):
    """Send every message to every client (through the hub, on every server, when one is
    attached); ``include_sender=False`` skips the sender. Passes the message on."""

    def __init__(self, include_sender: bool = True) -> None:
        self.include_sender = include_sender

    def on_message(self, client: Any, message: Message) -> MessageResult:
        exclude = () if self.include_sender else (client,)
        hub = getattr(client.server, "hub", None)
        if hub is not None:
            hub.broadcast(message, exclude=[c.id for c in exclude])
        else:
            client.server.broadcast(message, exclude=exclude)
        return message


class Log(Filter):
    """Print a line per open, message and close to ``stream`` (stdout by default).

    The open line shows the request path with credentials in its query hidden (see
    :func:`redact_query`)."""

    def __init__(self, stream: IO[str] | None = None, max_payload: int = 80) -> None:
        self.stream = stream
        self.max_payload = max_payload
        self._lock = threading.Lock()  # clients' threads print whole lines, never interleaved

    def _print(self, text: str) -> None:
        stream = self.stream or sys.stdout  # looked up late: follows a redirected sys.stdout
        line = "%s %s\n" % (time.strftime("%H:%M:%S"), text)
        with self._lock:
            stream.write(line)
            stream.flush()

    def on_open(self, client: Any) -> None:
        self._print("%s open %s" % (client.id, redact_query(client.path)))

    def on_message(self, client: Any, message: Message) -> MessageResult:
        payload = message.payload
        if isinstance(payload, str):
            shown = repr(payload[:self.max_payload]) + ("..." if len(payload) > self.max_payload else "")
        else:
            shown = "<%d bytes>" % len(payload)
        self._print("%s message %s" % (client.id, shown))
        return message

    def on_close(self, client: Any, code: int, reason: str) -> None:
        self._print(("%s close %s %s" % (client.id, code, reason)).rstrip())


class BearerAuth(Filter):
    """Answer 401 before the upgrade unless the request carries one of ``tokens``.

    The token is read from ``Authorization: Bearer <token>`` or, for browsers (which cannot
    set headers on a WebSocket), a ``token`` query parameter. Comparison is constant-time.
    The accepted token is left in ``client.request.state["token"]``.
    """

    def __init__(self, tokens: str | Iterable[str], realm: str = "twspy") -> None:
        given = [tokens] if isinstance(tokens, (str, bytes)) else list(tokens)
        self.tokens: list[bytes] = [t if isinstance(t, bytes) else t.encode("utf-8") for t in given]
        if not self.tokens or not all(self.tokens):
            raise ValueError("BearerAuth needs at least one non-empty token (--token)")
        self.realm = realm

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Filter:
        tokens = options.get("token") or []
        return cls([tokens] if isinstance(tokens, str) else tokens)

    def __repr__(self) -> str:  # never the tokens
        return "<filter BearerAuth (%d tokens)>" % len(self.tokens)

    def on_connect(self, request: Request) -> Reply:
        token = _request_token(request)
        if token is not None:
            given = token.encode("utf-8", "surrogateescape")
            # Compare with every token (no early exit) so timing says nothing about which matched.
            matched = False
            for expected in self.tokens:
                matched |= hmac.compare_digest(given, expected)
            if matched:
                request.state["token"] = token
                return None
        challenge = 'Bearer realm="%s"' % self.realm
        if token is not None:
            challenge += ', error="invalid_token"'
        return 401, (("WWW-Authenticate", challenge),), "missing or invalid bearer token\n"


def _request_token(request: Request) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            # Header values are decoded as latin-1: back to the bytes sent, read as UTF-8.
            return value.strip().encode("latin-1").decode("utf-8", "surrogateescape")
    for name, value in parse_qsl(urlsplit(request.path).query, keep_blank_values=True):
        if name == "token" and value:
            return value
    return None


# Query parameters whose decoded name contains one of these are hidden in logs.
_SECRET_NAMES = ("token", "secret", "passw", "auth", "key", "sig", "session", "credential")


def redact_query(target: str) -> str:
    """``target`` (a request path) with the values of credential-like query parameters
    replaced by ``***``, for logs.

    A parameter counts by its *decoded* name, as a server reads it: ``?%74oken=s3cret`` is a
    ``token`` (BearerAuth accepts it), so it is hidden too. Names containing token, secret,
    passw, auth, key, sig, session or credential (any case) are hidden.
    """
    path, sep, query = target.partition("?")
    if not sep:
        return target
    query, hash_sep, fragment = query.partition("#")
    parts = []
    for part in query.split("&"):
        name, equals, value = part.partition("=")
        if equals and value and any(word in unquote_plus(name).lower() for word in _SECRET_NAMES):
            part = name + "=***"
        parts.append(part)
    return path + "?" + "&".join(parts) + hash_sep + fragment


# -- running a chain (called by Server) ---------------------------------------------------------
def close_code_for(exc: BaseException) -> int:
    """The close code for an exception raised by a filter or handler."""
    if isinstance(exc, Reject):
        return exc.code
    if isinstance(exc, ProtocolError):
        return exc.code
    if isinstance(exc, PermissionError):
        return CLOSE_POLICY
    return CLOSE_UNABLE


def _failed(client: Any, flt: Filter, exc: Exception) -> None:
    """Close ``client`` for ``exc`` raised by ``flt``; the chain skips it from now on."""
    setattr(client, _FAILED, True)
    if isinstance(exc, ConnectionClosed) and getattr(client, "close_sent", False):
        # A send met a connection that is closing anyway: not the filter's bug (as for handlers).
        logger.debug("%r: %r: %s", client, flt, exc)
        return
    code = close_code_for(exc)
    if not valid_close_code(code):  # e.g. a ProtocolError(..., 1006): not sendable
        code = CLOSE_UNABLE
    if code == CLOSE_UNABLE:
        logger.error("%r: %r failed", client, flt, exc_info=exc)
        reason = "internal error"
    else:
        logger.info("%r: %r closes with %d: %s", client, flt, code, exc)
        reason = exc.reason if isinstance(exc, Reject) else exc.message if isinstance(exc, ProtocolError) else ""
    client.start_close(code, short_reason(reason))


def run_connect(filters: Sequence[Filter], request: Request) -> Reply:
    """Each filter's ``on_connect`` in order; the first HTTP reply wins."""
    for flt in filters:
        hook = getattr(flt, "on_connect", None)
        if hook is not None:
            reply: Reply = hook(request)
            if reply is not None:
                return reply
    return None


def run_open(filters: Sequence[Filter], client: Any) -> bool:
    """Each filter's ``on_open``; False if one failed (the client is closing: skip ``onopen``)."""
    for flt in filters:
        hook = getattr(flt, "on_open", None)
        if hook is not None:
            try:
                hook(client)
            except Exception as exc:
                _failed(client, flt, exc)
                return False
    return True


def run_message(filters: Sequence[Filter], client: Any, message: Message) -> Message | None:
    """The message after every filter's ``on_message``; None if one dropped it or failed.

    None at once for a client that a filter closed: what it sent after that is not processed.
    """
    if getattr(client, _FAILED, False):
        return None
    for flt in filters:
        hook = getattr(flt, "on_message", None)
        if hook is None:
            continue
        try:
            result = hook(client, message)
            if result is None:
                return None
            if isinstance(result, str):
                result = TextMessage(result)
            elif isinstance(result, (bytes, bytearray, memoryview)):
                result = BinaryMessage(result)
            elif not isinstance(result, Message):
                raise TypeError("on_message returned %s; expected a Message, str, bytes or None"
                                % type(result).__name__)
        except Exception as exc:
            _failed(client, flt, exc)
            return None
        message = result
    return message


def run_close(filters: Sequence[Filter], client: Any, code: int, reason: str) -> None:
    """Every filter's ``on_close``; an exception is logged and the rest still run."""
    for flt in filters:
        hook = getattr(flt, "on_close", None)
        if hook is not None:
            try:
                hook(client, code, reason)
            except Exception:
                logger.exception("%r: %r on_close failed", client, flt)

