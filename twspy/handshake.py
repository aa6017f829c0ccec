"""The opening handshake (RFC 6455 §4): build and check HTTP upgrade messages.

No sockets here: :func:`read_head` takes a ``recv`` callable, everything else turns bytes
into objects and back, so tests feed bytes. Server failures raise
:class:`~twspy.errors.HandshakeError` with the HTTP status to answer with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import inspect
import logging
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from http import HTTPStatus
from typing import Any, Callable, Union

from .errors import HandshakeError, NegotiationError
from .extension import Extension, ExtensionCodec, negotiate_client, negotiate_server, offer_header, parse_tokens

__all__ = [
    "GUID", "Headers", "Request", "Response", "accept_key", "make_key", "read_head",
    "parse_request", "parse_response", "build_request", "build_response", "error_response",
    "server_handshake", "check_response", "chosen_subprotocol", "has_token", "MAX_HEADER_SIZE",
    "Reply", "reply_parts", "reply_response", "run_request_hook", "head_end", "basic_auth", "digest_auth",
    "takes_path_and_headers", "legacy_hook",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER_SIZE = 16 * 1024
MAX_HEADERS = 128

_REASONS = {
    101: "Switching Protocols", 200: "OK", 301: "Moved Permanently", 302: "Found",
    303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    426: "Upgrade Required", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION_RE = re.compile(r"HTTP/[0-9]\.[0-9]")
_TARGET_RE = re.compile(r"[\x21-\x7e]+")  # RFC 9112 §3.2: visible ASCII; no controls, spaces or 8-bit bytes
_VALUE_RE = re.compile(r"[\x09\x20-\x7e\x80-\xff]*")
_STATUS_RE = re.compile(r"[0-9]{3}")  # not str.isdigit(): latin-1 "\xb2" ("²") is a digit to it


class Headers:
    """HTTP headers: an ordered multi-dict with case-insensitive names."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self._items if k.lower() == lname]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of ``name``; several lines are joined with ``", "`` (RFC 7230 §3.2.2)."""
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_all(name))

    def __iter__(self) -> Iterator[str]:
        return iter(k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return "Headers(%r)" % self._items


class Request:
    """A parsed HTTP request head.

    On a server, ``address`` is the peer's address and ``state`` a dict that request hooks
    (``process_request``, filters' ``on_connect``) may fill for the connection to read later
    as ``client.request.state``.
    """

    __slots__ = ("method", "path", "version", "headers", "address", "state")

    def __init__(self, method: str, path: str, version: str, headers: Headers, address: Any = None) -> None:
        self.method, self.path, self.version, self.headers = method, path, version, headers
        self.address = address
        self.state: dict[str, Any] = {}

    def __repr__(self) -> str:
        return "<Request %s %s>" % (self.method, self.path.partition("?")[0])  # no query: it may hold a token


class Response:
    """A parsed HTTP response head (``body`` is filled in by the reader when it has one)."""

    __slots__ = ("status", "reason", "headers", "body")

    def __init__(self, status: int, reason: str, headers: Headers, body: bytes = b"") -> None:
        self.status, self.reason, self.headers, self.body = status, reason, headers, body


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for ``Sec-WebSocket-Key`` (§4.2.2): base64(SHA-1(key + GUID))."""
    return base64.b64encode(hashlib.sha1((key.strip() + GUID).encode("ascii")).digest()).decode("ascii")


def make_key() -> str:
    """A fresh random ``Sec-WebSocket-Key`` (16 random bytes, base64)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def head_end(buf: bytes | bytearray, start: int = 0, max_size: int = MAX_HEADER_SIZE) -> int:
    """Where the HTTP head at the start of ``buf`` ends (just past its blank line), or -1.

    For incremental readers: ``start`` is how much of ``buf`` an earlier call already
    scanned. RFC 9112 §2.2: lines end with CRLF; a bare LF (which a recipient MAY accept)
    is refused at once with HandshakeError 400 rather than waited on or read two ways.
    HandshakeError 431 when the head does not end within ``max_size`` bytes.
    """
    pos = start
    while True:
        lf = buf.find(b"\n", pos)
        if lf < 0 or lf >= max_size:
            break
        if lf == 0 or buf[lf - 1] != 0x0D:
            raise HandshakeError("bare LF in the HTTP head (lines end with CRLF, RFC 9112 §2.2)", 400)
        if lf >= 3 and buf[lf - 3:lf + 1] == b"\r\n\r\n":
            return lf + 1
        pos = lf + 1
    if len(buf) > max_size:
        raise HandshakeError("HTTP header block exceeds %d bytes" % max_size, 431)
    return -1


def read_head(recv: Callable[[int], bytes], max_size: int = MAX_HEADER_SIZE,
              received: bytes = b"") -> tuple[bytes, bytes]:
    """Read an HTTP head with ``recv`` until the blank line: ``(head, bytes after it)``.

    ``received``: bytes already read (by a caller's own loop), parsed before any ``recv``.
    The bytes after the head are returned, not dropped: the peer may send frames at once.
    Raises HandshakeError 431 past ``max_size``, 400 for a bare LF (see :func:`head_end`)
    and ConnectionError on EOF.
    """
    buf = bytearray(received)
    start = 0
    while True:
        end = head_end(buf, start, max_size) if buf else -1
        if end >= 0:
            return bytes(buf[:end]), bytes(buf[end:])
        start = len(buf)
        chunk = recv(4096)
        if not chunk:
            raise ConnectionResetError("connection closed during the opening handshake")
        buf += chunk


def _parse_head(head: bytes) -> tuple[str, Headers]:
    try:
        text = head.decode("iso-8859-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise HandshakeError("undecodable HTTP head", 400) from None
    lines = text.split("\r\n")
    if lines and lines[-1] == "":
        lines.pop()
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise HandshakeError("empty HTTP head", 400)
    headers = Headers()
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise HandshakeError("malformed header line %r" % line[:80], 400)
        value = value.strip(" \t")
        if not _VALUE_RE.fullmatch(value):
            raise HandshakeError("invalid characters in header %s" % name, 400)
        headers.add(name, value)
    if len(headers) > MAX_HEADERS:
        raise HandshakeError("more than %d headers" % MAX_HEADERS, 431)
    return lines[0], headers


def parse_request(head: bytes) -> Request:
    """Parse a request head; HandshakeError 400 if it is not HTTP."""
    start, headers = _parse_head(head)
    parts = start.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise HandshakeError("malformed request line %r" % start[:80], 400)
    method, path, version = parts
    if not _TOKEN_RE.fullmatch(method) or not path:
        raise HandshakeError("malformed request line %r" % start[:80], 400)
    if not _TARGET_RE.fullmatch(path):  # control characters would reach logs and hooks as they are
        raise HandshakeError("invalid characters in the request target %r" % path[:80], 400)
    return Request(method, path, version, headers)


def parse_response(head: bytes) -> Response:
    """Parse a response head; HandshakeError if it is not HTTP."""
    start, headers = _parse_head(head)
    parts = start.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not _STATUS_RE.fullmatch(parts[1]):
        raise HandshakeError("malformed status line %r" % start[:80])
    return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers)


def build_request(host: str, path: str, key: str, origin: str | None = None,
                  protocols: Sequence[str] = (), extensions: Sequence[Extension] = (),
                  headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """The client's upgrade request (§4.1).

    Raises ValueError for a value with a line break (header injection) or a subprotocol
    that is not a token (§4.1: ``1#token``; the server would answer 400).
    """
    for value in (host, path, key, origin or "") + tuple(protocols):
        if "\r" in value or "\n" in value:
            raise ValueError("%r contains a line break" % value)
    for protocol in protocols:
        if not _TOKEN_RE.fullmatch(protocol):
            raise ValueError("subprotocol %r is not a token" % protocol)
    lines = ["GET %s HTTP/1.1" % path, "Host: %s" % host, "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Key: %s" % key, "Sec-WebSocket-Version: 13"]
    if origin:
        lines.append("Origin: %s" % origin)
    if protocols:
        lines.append("Sec-WebSocket-Protocol: %s" % ", ".join(protocols))
    if extensions:
        offer = offer_header(extensions)
        if offer:
            lines.append("Sec-WebSocket-Extensions: %s" % offer)
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError("header %r contains a line break" % name)
        lines.append("%s: %s" % (name, value))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")


def build_response(status: int, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    """An HTTP/1.1 response head (plus ``body`` with its Content-Length when not 101).

    A ``Content-Type`` in ``headers`` replaces the default ``text/plain; charset=utf-8``;
    ``Content-Length`` and ``Connection`` (the framing: the body, then close) are always ours,
    so any given in ``headers`` are dropped rather than sent twice.
    """
    lines = ["HTTP/1.1 %d %s" % (status, _reason(status))]
    typed = False
    for name, value in headers:
        lname = name.lower()
        if status != 101 and lname in ("content-length", "connection"):
            continue
        typed = typed or lname == "content-type"
        lines.append("%s: %s" % (name, value))
    if status != 101:
        lines.append("Content-Length: %d" % len(body))
        lines.append("Connection: close")
        if body and not typed:
            lines.append("Content-Type: text/plain; charset=utf-8")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + (body if status != 101 else b"")


Reply = Union[None, int, tuple[int, Union[str, bytes]],
              tuple[int, Iterable[tuple[str, str]], Union[str, bytes]], Response]
"""What a request hook returns: None to go on with the upgrade, or an HTTP answer given as a
status, ``(status, body)``, ``(status, headers, body)`` or a :class:`Response`."""


def reply_parts(reply: Reply) -> tuple[int, list[tuple[str, str]], bytes] | None:
    """``(status, headers, body bytes)`` of a request hook's :data:`Reply` (None for None).

    Raises TypeError for anything else, ValueError for a status that is not a final
    HTTP status (1xx would leave the client waiting for a 101 that never comes) or a
    header with a line break in it.
    """
    if reply is None:
        return None
    headers: Iterable[tuple[str, str]] = ()
    body: str | bytes = b""
    if isinstance(reply, Response):
        status, headers, body = reply.status, reply.headers.items(), reply.body
    elif isinstance(reply, int):
        status = reply
    elif isinstance(reply, tuple) and len(reply) == 2:
        status, body = reply
    elif isinstance(reply, tuple) and len(reply) == 3:
        status, headers, body = reply
    else:
        raise TypeError("a request hook returned %r; expected None, a status, (status, body), "
                        "(status, headers, body) or a Response" % (reply,))
    if not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError("a request hook answered with HTTP status %r; expected 200-599" % (status,))
    headers = list(headers)
    for name, value in headers:
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError("header %r contains a line break" % name)
    return status, headers, body.encode("utf-8") if isinstance(body, str) else bytes(body)


def run_request_hook(hook: Callable[[Request], Reply] | None, request: Request,
                     log: logging.Logger) -> tuple[int, bytes] | None:
    """Run a server's ``process_request`` hook: None to go on with the upgrade, or ``(status,
    HTTP response bytes)``. A hook that raises (SystemExit too) is a bug the client still gets
    an answer for: logged at ERROR, then HandshakeError 500."""
    if hook is None:
        return None
    try:
        return reply_response(hook(request))
    except HandshakeError:
        raise
    except (Exception, SystemExit) as exc:
        log.error("process_request failed for %r", request, exc_info=exc)
        raise HandshakeError("internal server error", 500) from exc


def takes_path_and_headers(hook: Callable[..., Any], method: bool = False) -> bool:
    """Whether a ``process_request`` hook has the deprecated ``(path, headers)`` signature
    rather than ``(request)`` (``method``: ``hook`` is the function in a class, ``self``
    first). Both servers use it to keep old hooks working, with a DeprecationWarning."""
    try:
        params = list(inspect.signature(hook).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - a builtin
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in params if p.kind in kinds]
    return len(positional) >= 2 + method and not any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params)


def legacy_hook(hook: Callable[..., Any], name: str = "process_request", method: bool = False,
                stacklevel: int = 2) -> bool:
    """Whether ``hook`` has the deprecated ``(path, headers)`` signature
    (:func:`takes_path_and_headers`); if so, a DeprecationWarning naming it as ``name``, at
    ``stacklevel`` counted from the caller (2: the caller's caller). Both servers call it, for
    a subclass's override (``method``) and for a hook given as an argument."""
    if not takes_path_and_headers(hook, method):
        return False
    warnings.warn("%s(path, headers) is deprecated: take process_request(request) and read request.method, "
                  "request.path, request.headers" % name, DeprecationWarning, stacklevel=stacklevel + 1)
    return True


def reply_response(reply: Reply) -> tuple[int, bytes] | None:
    """``(status, response bytes)`` for a request hook's :data:`Reply` (None for None); the
    errors of :func:`reply_parts`."""
    parts = reply_parts(reply)
    if parts is None:
        return None
    status, headers, body = parts
    return status, build_response(status, headers, body)


def _reason(status: int) -> str:
    try:
        return _REASONS.get(status) or HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def error_response(exc: HandshakeError) -> bytes:
    """The HTTP reply for a failed server handshake."""
    status = exc.status or 400
    return build_response(status, exc.extra_headers, (exc.message + "\n").encode("utf-8"))


def has_token(value: str | None, token: str) -> bool:
    """Whether a comma-separated header value such as ``Connection`` lists ``token`` (any case)."""
    return value is not None and token in (t.strip(" \t").lower() for t in value.split(","))


def default_select_subprotocol(client_protocols: Sequence[str], server_protocols: Sequence[str]) -> str | None:
    """The first of the client's subprotocols (its preference order) that the server supports."""
    for protocol in client_protocols:
        if protocol in server_protocols:
            return protocol
    return None


def server_handshake(request: Request, protocols: Sequence[str] = (),
                     extensions: Sequence[Extension] = (), trusted_origins: Sequence[str] = (),
                     locations: Sequence[str] = (),
                     select_subprotocol: Callable[[list[str], Sequence[str]], str | None] | None = None,
                     ) -> tuple[bytes, str | None, list[ExtensionCodec]]:
    """Validate an upgrade request (§4.2.1) and build the 101 response (§4.2.2).

    Returns ``(response bytes, subprotocol, extension codecs)``. Raises HandshakeError with
    405 (+ ``Allow: GET``), 505 (a version other than HTTP/1.1), 400 (also for a target
    that is not a path: absolute-form is a proxy's), 426 (with ``Sec-WebSocket-Version: 13``
    for a bad version), 403 (origin not trusted or path not in ``locations``) or 500 (the selector picked a
    subprotocol the client did not offer).
    """
    headers = request.headers
    if request.method != "GET":
        raise HandshakeError("method %s is not GET" % request.method, 405, extra_headers=(("Allow", "GET"),))
    if request.version != "HTTP/1.1":  # §4.1: "HTTP/1.1 or higher", but the upgrade is HTTP/1.1's
        if _VERSION_RE.fullmatch(request.version):
            raise HandshakeError("%s is not supported: the upgrade needs HTTP/1.1" % request.version, 505)
        raise HandshakeError("malformed HTTP version %r" % request.version[:20], 400)
    if not request.path.startswith("/"):
        # Absolute-form (a proxy's request) or asterisk-form: not for us (RFC 9112 §3.2).
        raise HandshakeError("request target %r is not a path" % request.path[:80], 400)
    hosts = headers.get_all("Host")
    if len(hosts) != 1 or not hosts[0]:
        raise HandshakeError("missing or repeated Host header", 400)
    if not has_token(headers.get("Upgrade"), "websocket"):
        raise HandshakeError("Upgrade: websocket header missing", 426,
                             extra_headers=(("Upgrade", "websocket"), ("Connection", "Upgrade")))
    if not has_token(headers.get("Connection"), "upgrade"):
        raise HandshakeError("Connection: Upgrade header missing", 426,
                             extra_headers=(("Upgrade", "websocket"), ("Connection", "Upgrade")))
    versions = headers.get_all("Sec-WebSocket-Version")
    if len(versions) != 1 or versions[0].strip() != "13":
        raise HandshakeError("unsupported Sec-WebSocket-Version %r" % ", ".join(versions), 426,
                             extra_headers=(("Sec-WebSocket-Version", "13"),))
    keys = headers.get_all("Sec-WebSocket-Key")
    if len(keys) != 1:
        raise HandshakeError("missing or repeated Sec-WebSocket-Key", 400)
    key = keys[0].strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError("invalid Sec-WebSocket-Key %r" % key[:40], 400)
    origin = headers.get("Origin")
    if trusted_origins and (origin is None or origin.lower() not in [o.lower() for o in trusted_origins]):
        raise HandshakeError("origin %r is not allowed" % origin, 403)
    path = request.path.split("?", 1)[0]
    if locations and path not in locations:
        # The query stays out of the message (it is logged): it may carry a token.
        raise HandshakeError("location %r is not served" % path, 403)
    try:
        client_protocols = parse_tokens(headers.get("Sec-WebSocket-Protocol") or "")
        if len(set(client_protocols)) != len(client_protocols):
            raise NegotiationError("repeated subprotocol in Sec-WebSocket-Protocol", 400)
        response_ext, codecs = negotiate_server(headers.get("Sec-WebSocket-Extensions") or "", extensions)
    except NegotiationError as exc:
        raise HandshakeError(exc.message, 400) from None
    protocol = None
    # A custom selector runs even without a ``protocols`` list: it may decide on its own.
    if client_protocols and (protocols or select_subprotocol is not None):
        protocol = (select_subprotocol or default_select_subprotocol)(client_protocols, protocols)
        if protocol is not None and protocol not in client_protocols:
            raise HandshakeError("selected subprotocol %r was not offered" % protocol, 500)
    lines = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept_key(key))]
    if protocol:
        lines.append(("Sec-WebSocket-Protocol", protocol))
    if response_ext:
        lines.append(("Sec-WebSocket-Extensions", response_ext))
    return build_response(101, lines), protocol, codecs


def check_response(response: Response, key: str, protocols: Sequence[str] = (),
                   extensions: Sequence[Extension] = ()) -> tuple[str | None, list[ExtensionCodec]]:
    """Validate the server's answer (§4.1): ``(subprotocol, extension codecs)``.

    Raises HandshakeError (status set) for a non-101 status, HandshakeError for a bad
    upgrade or accept key, NegotiationError for an unoffered subprotocol or extension.
    """
    headers = response.headers
    if response.status != 101:
        raise HandshakeError("server answered %d %s" % (response.status, response.reason),
                             response.status, headers, response.body)
    upgrade = headers.get("Upgrade")
    if upgrade is None or upgrade.strip(" \t").lower() != "websocket":  # §4.1: exactly "websocket"
        raise HandshakeError("response lacks Upgrade: websocket", None, headers)
    if not has_token(headers.get("Connection"), "upgrade"):
        raise HandshakeError("response lacks Connection: Upgrade", None, headers)
    accepts = headers.get_all("Sec-WebSocket-Accept")
    if len(accepts) != 1 or accepts[0].strip() != accept_key(key):
        raise HandshakeError("wrong Sec-WebSocket-Accept", None, headers)
    protocol = chosen_subprotocol(headers, protocols)
    codecs = negotiate_client(headers.get("Sec-WebSocket-Extensions") or "", extensions)
    return protocol, codecs


def chosen_subprotocol(headers: Headers, protocols: Sequence[str]) -> str | None:
    """The server's ``Sec-WebSocket-Protocol`` answer, checked against the client's offers (§4.1)."""
    answered = headers.get_all("Sec-WebSocket-Protocol")
    if not answered:
        return None
    if len(answered) != 1 or answered[0].strip() not in protocols:
        raise NegotiationError("server chose subprotocol %r, which was not offered" % ", ".join(answered))
    return answered[0].strip()


# -- HTTP authentication (here, below client and websocket, which both use it) -------------
def basic_auth(user: str, password: str) -> str:
    """An ``Authorization`` value for HTTP Basic auth (RFC 7617)."""
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode("utf-8")).decode("ascii")


_DIGEST_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def digest_auth(challenge: str, user: str, password: str, method: str, uri: str) -> str:
    """An ``Authorization`` value answering a Digest challenge (RFC 7616; MD5/SHA-256, qop=auth)."""
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _DIGEST_PARAM.finditer(challenge.split(" ", 1)[1] if " " in challenge else "")}
    realm, nonce = params.get("realm", ""), params.get("nonce", "")
    algorithm = params.get("algorithm", "MD5")
    hash_name = {"MD5": "md5", "SHA-256": "sha256"}.get(algorithm.upper().replace("-SESS", ""), None)
    if hash_name is None:
        raise HandshakeError("unsupported Digest algorithm %s" % algorithm, 401)

    def h(text: str) -> str:
        return hashlib.new(hash_name, text.encode("utf-8")).hexdigest()

    cnonce = os.urandom(8).hex()
    nc = "00000001"
    ha1 = h("%s:%s:%s" % (user, realm, password))
    if algorithm.upper().endswith("-SESS"):
        ha1 = h("%s:%s:%s" % (ha1, nonce, cnonce))
    ha2 = h("%s:%s" % (method, uri))
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    fields = ['username="%s"' % user, 'realm="%s"' % realm, 'nonce="%s"' % nonce, 'uri="%s"' % uri,
              "algorithm=%s" % algorithm]
    if "auth" in qops:
        response = h("%s:%s:%s:%s:auth:%s" % (ha1, nonce, nc, cnonce, ha2))
        fields += ["qop=auth", "nc=%s" % nc, 'cnonce="%s"' % cnonce]
    else:
        response = h("%s:%s:%s" % (ha1, nonce, ha2))
    fields.append('response="%s"' % response)
    if "opaque" in params:
        fields.append('opaque="%s"' % params["opaque"])
    return "Digest " + ", ".join(fields)
