"""Connecting as a client on an event loop: ``await connect(url)`` or ``async with connect(url)``.

The opening handshake runs in the sans-I/O core (:class:`twspy.handshake_protocol.ClientProtocol`);
this module opens TCP (and TLS), follows redirects and answers a 401 when the URL carries
credentials, as the threaded :func:`twspy.connect` does.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
import warnings
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any

from ..errors import HandshakeError
from ..extension import Extension
from ..handshake import MAX_HEADER_SIZE
from ..handshake_protocol import ClientProtocol
from ..permessage_deflate import default_extensions
from ..protocol import DEFAULT_MAX_SIZE
from ..redirects import HandshakeRetries
from ..uri import WebSocketURI, parse_uri
from .connection import (
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_MAX_OUTBOX,
    DEFAULT_MAX_QUEUE,
    DEFAULT_PING_INTERVAL,
    DEFAULT_PING_TIMEOUT,
    Connection,
)

__all__ = ["connect"]

logger = logging.getLogger("twspy.asyncio.client")

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
_UNSET: Any = object()  # connect(timeout=) not given


class connect:
    """Open a WebSocket connection to a ws:// or wss:// ``url``.

    ``conn = await connect(url)``, or ``async with connect(url) as conn:`` (closed with 1000
    on leaving). Follows redirects and answers a 401 with Basic or Digest auth when the URL has
    ``user:password@``, by the rules of :mod:`twspy.redirects` (the threaded connect's):
    a redirect to another scheme, host or port drops ``Authorization``, ``Cookie``,
    ``Proxy-Authorization`` and the URL's credentials; a downgrade from wss:// to ws:// and
    more than MAX_REDIRECTS redirects raise RedirectError.

    Args:
        protocols: subprotocols to offer (``conn.protocol`` is the chosen one).
        extensions: Extension instances to offer (None: permessage-deflate; ``[]`` for none).
        origin: the Origin header. headers: extra request headers (a mapping or pairs).
        ssl: SSLContext for wss:// (default: ``ssl.create_default_context()``, which checks
            the certificate and the hostname, with SNI).
        handshake_timeout: seconds for TCP connect + TLS + the HTTP upgrade of each attempt
            (default 10). ``timeout`` is its deprecated spelling (DeprecationWarning), as in
            the threaded connect().
        connection_class: the :class:`~twspy.asyncio.Connection` subclass to build.
        max_size, max_header_size, close_timeout, max_queue, max_outbox, ping_interval
            (default 20 s), ping_timeout (default 20 s): as the threaded connect().

    Raises:
        InvalidURI, HandshakeError (``status``, ``headers``, ``body`` of the answer),
        NegotiationError, TimeoutError, OSError.
    """

    def __init__(self, url: str, *, protocols: Sequence[str] | None = None,
                 extensions: Sequence[Extension] | None = None, origin: str | None = None,
                 headers: None | Mapping[str, str] | Iterable[tuple[str, str]] = None,
                 ssl: _ssl.SSLContext | None = None,
                 handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
                 connection_class: type[Connection] = Connection, max_size: int | None = DEFAULT_MAX_SIZE,
                 max_header_size: int = MAX_HEADER_SIZE,
                 close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT, max_queue: int | None = DEFAULT_MAX_QUEUE,
                 max_outbox: int = DEFAULT_MAX_OUTBOX, ping_interval: float | None = DEFAULT_PING_INTERVAL,
                 ping_timeout: float | None = DEFAULT_PING_TIMEOUT, timeout: Any = _UNSET) -> None:
        if timeout is not _UNSET:
            warnings.warn("connect(timeout=) is deprecated: use handshake_timeout=", DeprecationWarning, stacklevel=2)
            handshake_timeout = timeout
        self.handshake_timeout = handshake_timeout
        self.uri = parse_uri(url)
        self.protocols = list(protocols or ())
        self.extensions = default_extensions() if extensions is None else list(extensions)
        self.origin = origin
        self.headers = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        self.ssl = ssl
        self.connection_class = connection_class
        self.max_size = max_size
        self.max_header_size = max_header_size
        # What the Connection gets (its keywords, the threaded connect()'s defaults).
        self.options: dict[str, Any] = dict(close_timeout=close_timeout, max_queue=max_queue, max_outbox=max_outbox,
                                            ping_interval=ping_interval, ping_timeout=ping_timeout)
        self.connection: Connection | None = None

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._connect().__await__()

    async def __aenter__(self) -> Connection:
        self.connection = await self._connect()
        return self.connection

    async def __aexit__(self, *exc: Any) -> None:
        if self.connection is not None:
            await self.connection.close()

    async def _connect(self) -> Connection:
        retries = HandshakeRetries(self.uri, self.headers)
        while True:
            try:
                try:
                    return await asyncio.wait_for(self._attempt(retries.uri, retries.headers()),
                                                  self.handshake_timeout)
                except asyncio.TimeoutError:
                    after = self.handshake_timeout
                    raise TimeoutError("opening handshake timed out after %s seconds" % after) from None
            except HandshakeError as exc:
                if retries.retry(exc):  # a redirect or a 401 we can answer (RedirectError past the limits)
                    continue
                raise

    async def _attempt(self, uri: WebSocketURI, headers: list[tuple[str, str]]) -> Connection:
        core = ClientProtocol(host=uri.host_header, location=uri.resource, origin=self.origin,
                              protocols=self.protocols, extensions=self.extensions, headers=headers,
                              max_header_size=self.max_header_size, max_size=self.max_size, logger=logger)
        context = (self.ssl or _ssl.create_default_context()) if uri.secure else None
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: self.connection_class(core, **self.options), uri.host,
                                               uri.port, ssl=context, server_hostname=uri.host if context else None)
        try:
            await asyncio.shield(conn.opened)
        except BaseException:
            conn.abort()
            raise
        return conn
