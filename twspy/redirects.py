"""What a client sends on its next opening handshake after a 3xx or a 401. No I/O.

Both clients (``twspy.connect`` and ``twspy.asyncio.connect``) drive one
:class:`HandshakeRetries` so that the rules hold in both:

* a redirect (301, 302, 303, 307, 308) is followed up to ``MAX_REDIRECTS`` times, then
  :class:`~twspy.errors.RedirectError`; so is a ``wss://`` to ``ws://`` downgrade;
* a redirect to another scheme, host or port drops ``Authorization``, ``Cookie`` and
  ``Proxy-Authorization`` (any case) and the URL's credentials, for the rest of the chain
  (as browsers, requests and websockets do);
* a 401 is answered with Digest (preferred) or Basic auth when the URL has
  ``user:password@``, at most ``MAX_AUTH_ATTEMPTS`` times.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterable

from .errors import HandshakeError, RedirectError
from .handshake import Headers, basic_auth, digest_auth
from .uri import WebSocketURI, parse_uri

__all__ = ["HandshakeRetries", "MAX_REDIRECTS", "MAX_AUTH_ATTEMPTS", "CREDENTIAL_HEADERS", "REDIRECT_STATUSES",
           "answer_challenge"]

MAX_REDIRECTS = 10
MAX_AUTH_ATTEMPTS = 2
CREDENTIAL_HEADERS = frozenset(("authorization", "cookie", "proxy-authorization"))
REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))

logger = logging.getLogger("twspy.client")


class HandshakeRetries:
    """The URI and request headers of each opening handshake attempt.

    ``retry(exc)`` decides on a failed attempt's HandshakeError: True when the client
    should try again with the new :attr:`uri` and :meth:`headers`, False when it should
    raise ``exc``; RedirectError for a downgrade or too many redirects.
    """

    def __init__(self, uri: WebSocketURI, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.uri = uri
        self._headers = list(headers)
        self._auth: str | None = None
        self._auth_attempts = 0
        self._redirects = 0

    def headers(self) -> list[tuple[str, str]]:
        """The caller's headers (minus credentials after a cross-origin redirect), plus auth."""
        return self._headers + ([("Authorization", self._auth)] if self._auth else [])

    def retry(self, exc: HandshakeError) -> bool:
        answer = exc.headers if isinstance(exc.headers, Headers) else None
        if answer is None:
            return False
        if exc.status in REDIRECT_STATUSES and "Location" in answer:
            self._redirects += 1
            if self._redirects > MAX_REDIRECTS:
                raise RedirectError("too many redirects (more than %d)" % MAX_REDIRECTS, exc.status, exc.headers,
                                    exc.body) from None
            self._follow(answer["Location"], exc)
            return True
        if exc.status == 401 and self.uri.user_info and self._auth_attempts < MAX_AUTH_ATTEMPTS:
            self._auth_attempts += 1
            self._auth = answer_challenge(answer.get_all("WWW-Authenticate"), self.uri)
            return self._auth is not None
        return False

    def _follow(self, location: str, exc: HandshakeError) -> None:
        uri = self.uri
        target = re.sub(r"^http", "ws", urllib.parse.urljoin(_http_url(uri), location))
        new = parse_uri(target)
        shown = urllib.parse.urlsplit(target)._replace(netloc=new.host_header, query="").geturl()
        if uri.secure and not new.secure:
            raise RedirectError("refusing a redirect from wss:// to %s (a downgrade to plain text)" % shown,
                                exc.status, exc.headers, exc.body) from None
        logger.info("redirected to %s", shown)  # no credentials, no query (it may hold a token)
        if (new.secure, new.host, new.port) != (uri.secure, uri.host, uri.port):
            # Another origin: our credentials are not its to see. Once dropped they stay dropped.
            self._headers = [(k, v) for k, v in self._headers if k.lower() not in CREDENTIAL_HEADERS]
            self._auth = None
            self.uri = new
        else:
            self.uri = new._replace(user_info=new.user_info or uri.user_info)


def answer_challenge(challenges: list[str], uri: WebSocketURI) -> str | None:
    """The Authorization value answering a 401's WWW-Authenticate challenges with the URL's
    credentials: Digest when offered (RFC 7616), else Basic (RFC 7617); None if neither."""
    if not uri.user_info:
        return None
    user, password = uri.user_info
    for challenge in challenges:
        if challenge.split(" ", 1)[0].lower() == "digest":
            return digest_auth(challenge, user, password, "GET", uri.resource)
    for challenge in challenges:
        if challenge.split(" ", 1)[0].lower() == "basic":
            return basic_auth(user, password)
    return None


def _http_url(uri: WebSocketURI) -> str:
    return "%s://%s%s" % ("https" if uri.secure else "http", uri.host_header, uri.resource)
