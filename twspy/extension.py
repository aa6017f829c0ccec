"""The extension API and the ``Sec-WebSocket-Extensions`` grammar (RFC 6455 §9).

An :class:`Extension` is configuration, shared by every connection that uses it: it makes
offers (client) or picks an offer (server) and builds an :class:`ExtensionCodec`, the
per-connection state. A codec declares the RSV bits it owns and transforms data either
per frame (``per_frame = True``, run in the websocket layer) or per message (run in the
Connection layer). On send, codecs run in the negotiated order; on receive, in reverse.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Optional

from .errors import NegotiationError
from .frame import Frame

__all__ = [
    "Extension", "ExtensionCodec", "Params", "parse_extensions", "format_extensions",
    "parse_tokens", "negotiate_server", "negotiate_client", "offer_header",
]

Params = list[tuple[str, Optional[str]]]

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_OWS = r"[ \t]*"
# One extension element: name then ;param[=value] where value is a token or quoted-string.
_PARAM_RE = re.compile(_OWS + ";" + _OWS + "(" + _TOKEN + ")(?:" + _OWS + "=" + _OWS +
                       r"(?:(" + _TOKEN + r")|\"((?:[^\"\\]|\\.)*)\"))?")
_NAME_RE = re.compile(_OWS + "(" + _TOKEN + ")")
_COMMA_RE = re.compile(_OWS + "," + _OWS)
_END_RE = re.compile(_OWS + r"\Z")  # not "$", which also matches before a trailing newline


def parse_extensions(value: str) -> list[tuple[str, Params]]:
    """Parse a ``Sec-WebSocket-Extensions`` value (several lines joined with ``,``).

    Returns ``[(name, [(param, value or None), ...]), ...]``. A quoted value must unquote to
    a token (§9.1). Empty list elements are skipped. Raises NegotiationError (status 400).
    """
    result: list[tuple[str, Params]] = []
    pos, n = 0, len(value)
    while pos < n:
        m = _COMMA_RE.match(value, pos)
        if m:  # empty element
            pos = m.end()
            continue
        if _END_RE.match(value, pos):
            break
        m = _NAME_RE.match(value, pos)
        if not m:
            raise NegotiationError("invalid extension header %r at offset %d" % (value, pos), 400)
        name = m.group(1)
        pos = m.end()
        params: Params = []
        while True:
            m = _PARAM_RE.match(value, pos)
            if not m:
                break
            pname, token, quoted = m.groups()
            if quoted is not None:
                quoted = re.sub(r"\\(.)", r"\1", quoted)
                if not _TOKEN_RE.fullmatch(quoted):
                    raise NegotiationError("quoted extension parameter %r is not a token" % quoted, 400)
                token = quoted
            params.append((pname, token))
            pos = m.end()
        m = _COMMA_RE.match(value, pos)
        if m:
            pos = m.end()
        elif _END_RE.match(value, pos):
            pos = n
        else:
            raise NegotiationError("invalid extension header %r at offset %d" % (value, pos), 400)
        result.append((name, params))
    return result


def format_extensions(items: Sequence[tuple[str, Params]]) -> str:
    """The inverse of :func:`parse_extensions`."""
    return ", ".join(
        "; ".join([name] + [p if v is None else "%s=%s" % (p, v) for p, v in params])
        for name, params in items)


def parse_tokens(value: str) -> list[str]:
    """Parse a ``1#token`` list such as ``Sec-WebSocket-Protocol``; NegotiationError if malformed."""
    tokens = []
    for part in value.split(","):
        part = part.strip(" \t")
        if not part:
            continue
        if not _TOKEN_RE.fullmatch(part):
            raise NegotiationError("invalid token %r" % part, 400)
        tokens.append(part)
    return tokens


class ExtensionCodec:
    """Per-connection state of a negotiated extension. Override what the extension does.

    Attributes:
        name: the token negotiated. rsv: the RSV bits it owns (0x40 = RSV1).
        per_frame: True for per-frame transforms (websocket layer), False for per-message
        (Connection layer).
    """

    name = ""
    rsv = 0
    per_frame = False

    # per-frame extensions
    def encode_frame(self, frame: Frame) -> Frame:
        return frame

    def decode_frame(self, frame: Frame, max_size: int | None) -> Frame:
        return frame

    # per-message extensions
    def encode_message(self, opcode: int, payload: bytes, compress: bool = True) -> tuple[bytes, int]:
        """Transform a whole message; return the payload and the RSV bits of its first frame."""
        return payload, 0

    def decode_frame_of_message(self, payload: bytes, first_rsv: int, final: bool,
                                max_size: int | None) -> bytes:
        """Transform one frame of a received message; ``first_rsv`` are the first frame's RSV bits."""
        return payload

    def close(self) -> None:
        """Release resources (zlib objects, ...) when the connection ends."""


class Extension:
    """A configured extension: negotiates and creates codecs. Subclass and override.

    Attributes:
        name: the registered token. aliases: other tokens it answers to. rsv: RSV bits used.
    """

    name = ""
    aliases: tuple[str, ...] = ()
    rsv = 0

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) + tuple(self.aliases)

    def offers(self) -> list[tuple[str, Params]]:
        """Client: the offers to send, most preferred first."""
        return [(self.name, [])]

    def accept_offer(self, name: str, params: Params) -> tuple[Params, ExtensionCodec] | None:
        """Server: answer one offer with ``(response params, codec)``, or None to decline it."""
        return None

    def accept_response(self, name: str, params: Params,
                        offers: list[tuple[str, Params]]) -> ExtensionCodec:
        """Client: validate the server's answer to ``offers``; raise NegotiationError if unacceptable."""
        raise NegotiationError("extension %s is not supported" % name)

    def __repr__(self) -> str:
        return "%s()" % type(self).__name__


def offer_header(extensions: Sequence[Extension]) -> str:
    """The client's ``Sec-WebSocket-Extensions`` value for ``extensions``."""
    return format_extensions([offer for ext in extensions for offer in ext.offers()])


def negotiate_server(header: str, extensions: Sequence[Extension]) -> tuple[str, list[ExtensionCodec]]:
    """Server side: pick offers from the request header value (§9.1).

    Each configured extension accepts at most one offer, the first it finds acceptable;
    an extension whose RSV bits are already taken declines. Returns the response header
    value ('' for none) and the codecs in order of application.
    """
    if not header or not extensions:
        return "", []
    accepted: list[tuple[str, Params]] = []
    codecs: list[ExtensionCodec] = []
    used: list[Extension] = []
    rsv_taken = 0
    for name, params in parse_extensions(header):
        for ext in extensions:
            if name in ext.names and ext not in used and not (ext.rsv & rsv_taken):
                answer = ext.accept_offer(name, params)
                if answer is not None:
                    response_params, codec = answer
                    accepted.append((name, response_params))
                    codecs.append(codec)
                    used.append(ext)
                    rsv_taken |= ext.rsv
                    break
                # declined: another configured extension with this name may accept it
    return format_extensions(accepted), codecs


def negotiate_client(header: str, extensions: Sequence[Extension]) -> list[ExtensionCodec]:
    """Client side: validate the server's ``Sec-WebSocket-Extensions`` answer (§9.1).

    Fails (NegotiationError) for an extension that was not offered, one accepted twice,
    RSV bits claimed by two extensions, or an answer the extension itself refuses.
    """
    if not header:
        return []
    codecs: list[ExtensionCodec] = []
    used: list[Extension] = []
    rsv_taken = 0
    for name, params in parse_extensions(header):
        ext = next((e for e in extensions if name in e.names), None)
        if ext is None:
            raise NegotiationError("server accepted extension %s, which was not offered" % name)
        if ext in used:
            raise NegotiationError("server accepted extension %s twice" % name)
        if ext.rsv & rsv_taken:
            raise NegotiationError("server accepted extensions that share RSV bits")
        offers = [o for o in ext.offers() if o[0] == name]
        if not offers:  # e.g. an alias of an extension that only offered its main name
            raise NegotiationError("server accepted extension %s, which was not offered" % name)
        codecs.append(ext.accept_response(name, params, offers))
        used.append(ext)
        rsv_taken |= ext.rsv
    return codecs
