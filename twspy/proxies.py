"""Client-side tunnels through HTTP and SOCKS proxies, and the environment's proxy settings.

:func:`open_tunnel` connects to a proxy and asks it for a TCP stream to ``host:port``; what it
returns is a socket that :func:`~twspy.client.connect` runs TLS (for wss://) and the WebSocket
handshake over, as over a direct connection. Supported proxy URLs:

=====================  ==================================================================
``http://[u:p@]h:p``   HTTP ``CONNECT`` (RFC 9110 §9.3.6), Basic ``Proxy-Authorization``
``https://[u:p@]h:p``  the same inside TLS to the proxy (then TLS to a wss:// server inside)
``socks5://``          SOCKS5 (RFC 1928), user/password (RFC 1929); names resolved locally
``socks5h://``         SOCKS5, the proxy resolves the name
``socks4://``          SOCKS4 (IPv4, resolved locally); ``socks4a://``: the proxy resolves
=====================  ==================================================================

:func:`proxy_for` picks a proxy from the environment as :mod:`urllib.request` does: ws:// uses
``http_proxy``, wss:// ``https_proxy``, both fall back to ``all_proxy``, and ``no_proxy`` is
honoured. A refused or broken tunnel raises :class:`~twspy.errors.ProxyError` (a
ConnectionError) naming the proxy (never its credentials) and its answer.

This module is also the upstream leg's way out for :mod:`twspy.proxy` (the relay).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import selectors
import socket
import ssl as _ssl
import struct
import threading
import time
import urllib.parse
import urllib.request
from typing import NamedTuple

from .errors import ProxyError

__all__ = ["ProxyURL", "parse_proxy", "proxy_for", "open_tunnel", "wrap_tls_inside", "PROXY_SCHEMES",
           "MAX_PROXY_ANSWER"]

logger = logging.getLogger("twspy.proxies")

PROXY_SCHEMES = ("http", "https", "socks5", "socks5h", "socks4", "socks4a")
MAX_PROXY_ANSWER = 16 * 1024  # bytes of an HTTP proxy's answer head we read before giving up

_DEFAULT_PORTS = {"http": 80, "https": 443}  # SOCKS: 1080
_SOCKS5_REPLIES = {  # RFC 1928 §6
    1: "general SOCKS server failure", 2: "connection not allowed by ruleset", 3: "network unreachable",
    4: "host unreachable", 5: "connection refused", 6: "TTL expired", 7: "command not supported",
    8: "address type not supported",
}
_SOCKS4_REPLIES = {91: "request rejected or failed", 92: "rejected: no identd on the client",
                   93: "rejected: identd user mismatch"}


class ProxyURL(NamedTuple):
    """A parsed proxy URL; ``shown`` is the URL without credentials, for messages and logs."""

    scheme: str
    host: str
    port: int
    user_info: tuple[str, str] | None

    @property
    def shown(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s:%d" % (self.scheme, host, self.port)


def parse_proxy(url: str) -> ProxyURL:
    """Parse a proxy URL (a bare ``host:port`` means ``http://``); ValueError when it is not one."""
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError("bad proxy URL: %s" % exc) from None
    scheme = parts.scheme.lower()
    if scheme not in PROXY_SCHEMES:
        raise ValueError("unsupported proxy scheme %r (supported: %s)" % (scheme, ", ".join(PROXY_SCHEMES)))
    if not parts.hostname:
        raise ValueError("bad proxy URL: no host")
    user_info = None
    if parts.username is not None:
        user_info = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
    return ProxyURL(scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS.get(scheme, 1080),
                    user_info)


def proxy_for(secure: bool, host: str, port: int) -> str | None:
    """The proxy the environment names for a ws:// (``secure`` False) or wss:// URL, or None.

    Like :func:`urllib.request.getproxies` and :func:`urllib.request.proxy_bypass`: ws:// uses
    ``http_proxy``, wss:// ``https_proxy``, both fall back to ``all_proxy``; a host matched by
    ``no_proxy`` goes direct.
    """
    proxies = urllib.request.getproxies()
    proxy = proxies.get("https" if secure else "http") or proxies.get("all")
    if not proxy:
        return None
    target = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    return None if urllib.request.proxy_bypass(target) else proxy  # no_proxy (or the OS's exceptions)


def open_tunnel(host: str, port: int, proxy: str | ProxyURL, timeout: float | None = None,
                proxy_ssl: _ssl.SSLContext | None = None) -> socket.socket:
    """A socket connected to ``host:port`` through ``proxy``, ready for TLS or the handshake.

    Args:
        host, port: where the tunnel should lead.
        proxy: a proxy URL (see the module docstring) or a :class:`ProxyURL`.
        timeout: seconds for the whole exchange with the proxy (TCP, TLS, CONNECT).
        proxy_ssl: the ``ssl.SSLContext`` for an https:// proxy (default: the system's, which
            checks the proxy's certificate and name).

    The socket is blocking (timeout None) when returned. For an https:// proxy it is an
    ``SSLSocket``; :func:`wrap_tls_inside` makes a socket for a second TLS layer inside it.

    Raises:
        ProxyError: the proxy refused, closed the connection, or answered something malformed.
        OSError: the proxy could not be reached (refused, unreachable, timed out).
    """
    parsed = proxy if isinstance(proxy, ProxyURL) else parse_proxy(proxy)
    deadline = None if timeout is None else time.monotonic() + timeout
    sock = socket.create_connection((parsed.host, parsed.port), timeout)
    try:
        if parsed.scheme == "https":
            context = proxy_ssl or _ssl.create_default_context()
            sock = context.wrap_socket(sock, server_hostname=parsed.host)
        io = _Exchange(sock, parsed, deadline)
        if parsed.scheme in ("http", "https"):
            _http_connect(io, host, port)
        elif parsed.scheme in ("socks5", "socks5h"):
            _socks5(io, host, port, resolve=parsed.scheme == "socks5")
        else:
            _socks4(io, host, port, resolve=parsed.scheme == "socks4")
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    logger.debug("tunnel to %s:%d through %s", host, port, parsed.shown)
    return sock


class _Exchange:
    """Reads and writes to the proxy before a deadline; EOF and timeouts become ProxyError."""

    def __init__(self, sock: socket.socket, proxy: ProxyURL, deadline: float | None) -> None:
        self.sock, self.proxy, self.deadline = sock, proxy, deadline

    def error(self, what: str, status: int | None = None, reason: str = "") -> ProxyError:
        return ProxyError("proxy %s: %s" % (self.proxy.shown, what), self.proxy.shown, status, reason)

    def _settimeout(self) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self.error("no answer in time")
            self.sock.settimeout(left)

    def send(self, data: bytes) -> None:
        self._settimeout()
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise self.error("no answer in time") from None
        except OSError as exc:
            raise self.error("connection lost while sending: %s" % exc) from None

    def recv(self, n: int, exact: bool = True, started: bool = False) -> bytes:
        """``n`` bytes (or, with ``exact`` False, what arrives first, at most ``n``).

        ``started``: part of the answer came already (for the message if the proxy closes).
        """
        data = b""
        while len(data) < n:
            self._settimeout()
            try:
                chunk = self.sock.recv(n - len(data))
            except socket.timeout:
                raise self.error("no answer in time") from None
            except OSError as exc:
                raise self.error("connection lost: %s" % exc) from None
            if not chunk:
                raise self.error("closed the connection before answering" if not (data or started) else
                                 "closed the connection in the middle of its answer")
            data += chunk
            if not exact:
                break
        return data


# -- HTTP CONNECT (RFC 9110 §9.3.6) -------------------------------------------------------------
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?")


def _http_connect(io: _Exchange, host: str, port: int) -> None:
    if not host.isascii():  # the request line is ASCII: an international name in its IDNA form
        host = host.encode("idna").decode("ascii")
    authority = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    request = "CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (authority, authority)
    if io.proxy.user_info is not None:
        token = base64.b64encode(("%s:%s" % io.proxy.user_info).encode("utf-8")).decode("ascii")
        request += "Proxy-Authorization: Basic %s\r\n" % token
    io.send((request + "\r\n").encode("ascii", "strict"))
    # Read the answer head byte-chunk by chunk up to the blank line. The server behind the tunnel
    # says nothing before our handshake, so nothing after the head can be read by mistake.
    head = b""
    while b"\r\n\r\n" not in head:
        if len(head) > MAX_PROXY_ANSWER:
            raise io.error("answer head larger than %d bytes" % MAX_PROXY_ANSWER)
        head += io.recv(4096, exact=False, started=bool(head))
    head, _, rest = head.partition(b"\r\n\r\n")
    match = _STATUS_LINE.fullmatch(head.split(b"\r\n", 1)[0])
    if match is None:
        raise io.error("malformed answer to CONNECT: %r" % head.split(b"\r\n", 1)[0][:80])
    status = int(match.group(1))
    reason = (match.group(2) or b"").decode("latin-1").strip()
    if not 200 <= status < 300:
        raise io.error("refused the tunnel to %s: %d %s" % (authority, status, reason), status, reason)
    if rest:
        raise io.error("sent %d unexpected bytes after its answer to CONNECT" % len(rest))


# -- SOCKS5 (RFC 1928) with user/password (RFC 1929) ----------------------------------------------
def _socks5(io: _Exchange, host: str, port: int, resolve: bool) -> None:
    creds = io.proxy.user_info
    io.send(b"\x05\x02\x00\x02" if creds else b"\x05\x01\x00")  # §3: version, methods
    version, method = io.recv(2)
    if version != 5:
        raise io.error("malformed SOCKS5 answer (version %d)" % version)
    if method == 0x02 and creds:
        user, password = (part.encode("utf-8") for part in creds)
        if len(user) > 255 or len(password) > 255:
            raise io.error("SOCKS5 user and password are limited to 255 bytes each")
        io.send(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)  # RFC 1929 §2
        _, status = io.recv(2)
        if status != 0:
            raise io.error("refused the user and password (SOCKS5 auth status %d)" % status, status,
                           "authentication failed")
    elif method == 0xFF:
        raise io.error("accepts none of our SOCKS5 auth methods (%s)" % (
            "user/password, none" if creds else "none: it may want a user and password"), method,
            "no acceptable methods")
    elif method != 0x00:
        raise io.error("chose a SOCKS5 auth method we did not offer (%d)" % method)
    io.send(b"\x05\x01\x00" + _socks5_address(io, host, port, resolve) + struct.pack("!H", port))  # §4 CONNECT
    version, reply, _, atyp = io.recv(4)
    if version != 5:
        raise io.error("malformed SOCKS5 reply (version %d)" % version)
    if reply != 0:
        reason = _SOCKS5_REPLIES.get(reply, "unassigned reply code")
        raise io.error("refused the tunnel to %s:%d: SOCKS5 reply %d (%s)" % (host, port, reply, reason),
                       reply, reason)
    # §6: skip BND.ADDR and BND.PORT
    if atyp == 1:
        io.recv(4 + 2)
    elif atyp == 4:
        io.recv(16 + 2)
    elif atyp == 3:
        io.recv(io.recv(1)[0] + 2)
    else:
        raise io.error("malformed SOCKS5 reply (address type %d)" % atyp)


def _socks5_address(io: _Exchange, host: str, port: int, resolve: bool) -> bytes:
    """§5: ATYP and DST.ADDR; socks5:// resolves the name here, socks5h:// sends it."""
    if resolve:
        host = _resolve(host, port, socket.AF_UNSPEC)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if len(name) > 255:
            raise io.error("host name longer than 255 bytes") from None
        return b"\x03" + bytes([len(name)]) + name
    return (b"\x01" if address.version == 4 else b"\x04") + address.packed


def _resolve(host: str, port: int, family: int) -> str:
    return str(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4][0])


# -- SOCKS4 and SOCKS4a -------------------------------------------------------------------------
def _socks4(io: _Exchange, host: str, port: int, resolve: bool) -> None:
    user = (io.proxy.user_info[0] if io.proxy.user_info else "").encode("utf-8")
    if resolve:
        address, name = socket.inet_aton(_resolve(host, port, socket.AF_INET)), b""
    else:
        try:
            address, name = socket.inet_aton(str(ipaddress.IPv4Address(host))), b""
        except ValueError:  # SOCKS4a: 0.0.0.x and the name after the user id
            address, name = b"\x00\x00\x00\x01", host.encode("idna") + b"\x00"
    io.send(b"\x04\x01" + struct.pack("!H", port) + address + user + b"\x00" + name)
    version, reply = io.recv(8)[:2]
    if version != 0:
        raise io.error("malformed SOCKS4 reply (version %d)" % version)
    if reply != 90:
        reason = _SOCKS4_REPLIES.get(reply, "unknown reply code")
        raise io.error("refused the tunnel to %s:%d: SOCKS4 reply %d (%s)" % (host, port, reply, reason),
                       reply, reason)


# -- TLS inside TLS -----------------------------------------------------------------------------
def wrap_tls_inside(outer: socket.socket, name: str = "twspy-tls-tunnel") -> socket.socket:
    """A plain socket whose bytes travel inside ``outer`` (e.g. an SSLSocket to an https:// proxy).

    ``ssl`` cannot wrap an SSLSocket a second time, so one small thread copies bytes between
    ``outer`` and one end of a socketpair; the caller gets the other end, which TLS can wrap.
    One thread, not one per direction: an SSL object must not be read and written by two
    threads at once. The thread ends, and closes ``outer``, once either side closes.
    """
    inner, ours = socket.socketpair()
    try:
        outer.setblocking(False)
        ours.setblocking(False)
        threading.Thread(target=_pump, args=(outer, ours), name=name, daemon=True).start()
    except BaseException:
        inner.close()
        ours.close()
        raise
    return inner


_WOULD_BLOCK = (BlockingIOError, _ssl.SSLWantReadError, _ssl.SSLWantWriteError)


def _pump(outer: socket.socket, ours: socket.socket) -> None:
    """Copy both ways between non-blocking ``outer`` and ``ours`` until one side ends."""
    selector = selectors.DefaultSelector()
    to_ours, to_outer = b"", b""  # read from one side, not yet written to the other
    try:
        while True:
            # Read a side only when what came from it has been passed on (backpressure both ways).
            if not to_ours:
                try:
                    to_ours = outer.recv(65536)
                    if not to_ours:
                        return  # the proxy or the server closed: so does the tunnel
                except _WOULD_BLOCK:
                    pass
            if not to_outer:
                try:
                    to_outer = ours.recv(65536)
                    if not to_outer:
                        return  # our websocket closed
                except BlockingIOError:
                    pass
            if to_ours:
                try:
                    to_ours = to_ours[ours.send(to_ours):]
                except BlockingIOError:
                    pass
            if to_outer:
                try:
                    to_outer = to_outer[outer.send(to_outer):]  # a retried TLS write may move (CPython sets
                except _WOULD_BLOCK:                            # SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
                    pass
            pending = isinstance(outer, _ssl.SSLSocket) and outer.pending() > 0
            if pending and not to_ours:
                continue  # decrypted bytes wait inside the TLS layer: select() would not see them
            for sock, events in ((outer, (0 if to_ours else selectors.EVENT_READ) |
                                  (selectors.EVENT_WRITE if to_outer else 0)),
                                 (ours, (0 if to_outer else selectors.EVENT_READ) |
                                  (selectors.EVENT_WRITE if to_ours else 0))):
                if events:
                    try:
                        selector.modify(sock, events)
                    except KeyError:
                        selector.register(sock, events)
                else:
                    try:
                        selector.unregister(sock)
                    except KeyError:
                        pass
            selector.select()
    except Exception:  # OSError (a reset), ssl.SSLError: the tunnel is gone either way
        pass
    finally:
        selector.close()
        for sock in (ours, outer):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
