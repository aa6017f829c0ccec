"""twspy.deprecation: options that became keyword-only still bind by position, with a warning."""

from __future__ import annotations

import inspect
import socket

import pytest

import twspy
from twspy.deprecation import keyword_only


class Thing:
    @keyword_only(2)
    def __init__(self, first, *, a=1, b=2):
        self.first, self.a, self.b = first, a, b


def test_keywords_give_no_warning(recwarn):
    thing = Thing(0, a=5)
    assert (thing.first, thing.a, thing.b) == (0, 5, 2)
    assert not recwarn.list


def test_positions_bind_in_order_with_a_warning():
    with pytest.warns(DeprecationWarning, match=r"Thing\(\): passing a, b by position is deprecated"):
        thing = Thing(0, 7, 8)
    assert (thing.a, thing.b) == (7, 8)


def test_too_many_or_twice_is_a_type_error():
    with pytest.raises(TypeError, match="at most 4 positional"):
        Thing(0, 1, 2, 3)
    with pytest.raises(TypeError, match="multiple values for argument 'a'"):
        Thing(0, 1, a=2)


def test_signature_shows_keyword_only():
    params = inspect.signature(twspy.websocket).parameters
    assert params["origin"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(twspy.Connection).parameters["close_timeout"].kind is inspect.Parameter.KEYWORD_ONLY


def test_websocket_and_connection_old_spellings():
    with pytest.warns(DeprecationWarning, match="origin"):
        ws = twspy.websocket(None, "http://example.com", ["chat"])
    try:
        assert ws.origin == "http://example.com" and ws.protocols == ["chat"]
    finally:
        ws.close()
    a, b = socket.socketpair()
    try:
        ws = twspy.websocket(a)
        ws.server_side = True
        ws._opened(b"", require_mask=True)  # the handshake marked done, as conftest does
        with pytest.warns(DeprecationWarning, match="close_timeout"):
            conn = twspy.Connection(ws, 0.5)
        assert conn.close_timeout == 0.5
        conn.abort()
    finally:
        a.close()
        b.close()
