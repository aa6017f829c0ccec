"""twspy/handshake.py beside test_handshake.py: reply_response for a Response object and for
header values that would split the answer (response splitting)."""

from __future__ import annotations

import pytest

from twspy.handshake import Headers, Response, reply_response


def test_a_response_object_is_answered_as_it_is():
    response = Response(403, "Forbidden", Headers([("X-Why", "closed")]), b"go away\n")
    status, raw = reply_response(response)
    assert status == 403
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"\r\nX-Why: closed" in head
    assert b"\r\nContent-Length: 8" in head and body == b"go away\n"


@pytest.mark.parametrize("headers", [
    [("X-Ok", "a\r\nSet-Cookie: stolen=1")],
    [("X-Ok", "a\nb")],
    [("X-Bad\r\nName", "v")],
])
def test_line_breaks_in_reply_headers_are_refused(headers):
    # A hook that copies request data into a header must not let it add headers of its own.
    with pytest.raises(ValueError, match="contains a line break"):
        reply_response((401, headers, "no"))
    with pytest.raises(ValueError, match="contains a line break"):
        reply_response(Response(401, "Unauthorized", Headers(headers)))
