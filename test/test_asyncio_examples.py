"""The asyncio examples run as written (the README shows them; test_examples checks the copies)."""

from __future__ import annotations

import re

from test_examples import run, server_example  # noqa: F401  (the fixture)


def test_asyncio_echo():
    assert run("asyncio_echo.py").splitlines() == ["echo me"]


def test_asyncio_chat_with_the_asyncio_client(server_example):  # noqa: F811
    port = server_example("asyncio_chat_server.py")
    out = run("asyncio_client.py", "ws://127.0.0.1:%d/" % port).splitlines()
    assert re.fullmatch(r"\d+ joined \(1 here\)", out[0])
    assert re.fullmatch(r"\d+: Hello", out[1])
    assert out[2:] == ["pong after < 1 s", "closed with 1000"]


def test_threaded_client_example_against_the_asyncio_chat(server_example):  # noqa: F811
    port = server_example("asyncio_chat_server.py")
    out = run("client.py", "ws://127.0.0.1:%d/" % port).splitlines()
    assert re.fullmatch(r"\d+ joined \(1 here\)", out[0])
    assert re.fullmatch(r"\d+: Hello", out[1])
