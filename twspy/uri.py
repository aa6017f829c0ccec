"""ws:// and wss:// URLs (RFC 6455 §3)."""

from __future__ import annotations

import urllib.parse
from typing import NamedTuple

from .errors import InvalidURI

__all__ = ["WebSocketURI", "parse_uri"]


class WebSocketURI(NamedTuple):
    """A parsed WebSocket URL; ``resource`` is the path plus query sent in the request."""

    secure: bool
    host: str
    port: int
    resource: str
    user_info: tuple[str, str] | None

    @property
    def host_header(self) -> str:
        """The Host header: brackets around IPv6, the port unless it is the default."""
        host = "[%s]" % self.host if ":" in self.host else self.host
        return host if self.port == (443 if self.secure else 80) else "%s:%d" % (host, self.port)

    @property
    def origin(self) -> str:
        """An ``http(s)://`` origin for this host, for servers that check Origin."""
        return "%s://%s" % ("https" if self.secure else "http", self.host_header)


def parse_uri(uri: str) -> WebSocketURI:
    """Parse and validate a ws:// or wss:// URL; InvalidURI when it is not one."""
    try:
        parsed = urllib.parse.urlsplit(uri)
        port = parsed.port
    except ValueError as exc:
        raise InvalidURI(uri, str(exc)) from None
    scheme = parsed.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise InvalidURI(uri, "scheme isn't ws or wss")
    if not parsed.hostname:
        raise InvalidURI(uri, "no host")
    if parsed.fragment or uri.endswith("#"):
        raise InvalidURI(uri, "a WebSocket URI has no fragment (§3)")
    secure = scheme == "wss"
    resource = parsed.path or "/"
    if parsed.query:
        resource += "?" + parsed.query
    # Non-ASCII characters in the resource are percent-encoded; the rest is kept as given.
    resource = urllib.parse.quote(resource, safe="!#$%&'()*+,/:;=?@[]~")
    user_info = None
    if parsed.username is not None or parsed.password is not None:
        user_info = (urllib.parse.unquote(parsed.username or ""), urllib.parse.unquote(parsed.password or ""))
    if port is None:  # not ``port or default``: an explicit :0 must not turn into :80
        port = 443 if secure else 80
    return WebSocketURI(secure, parsed.hostname, port, resource, user_info)
