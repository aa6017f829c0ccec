"""twspy/cli.py in process through ``main(argv)``: usage errors for options and config values that
test_cli.py and test_cli_serve.py leave out, busy ports under --asyncio, ``connect --insecure``,
--wait with a silent server, and Ctrl-C while connecting."""

from __future__ import annotations

import io
import json
import socket
import ssl
import sys
import threading

import pytest

import twspy
import twspy.cli
from twspy.cli import EchoServer, main

from conftest import CERT, KEY, url

TIMEOUT = 5


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(*argv)``: ``main(argv)`` in this process with an empty stdin: (status, stdout, stderr)."""
    def run(*argv):
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err
    return run


@pytest.fixture
def busy_port():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        yield busy.getsockname()[1]


@pytest.mark.parametrize("command", ["echo", "serve"])
def test_asyncio_has_no_unix_socket_yet(cli, tmp_path, command):
    status, _, err = cli(command, "--asyncio", "--unix", str(tmp_path / "s.sock"))
    assert status == 2 and err == "twspy %s: --unix is not available with --asyncio yet\n" % command
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.parametrize("argv, message", [
    (["echo", "--max-size", "lots"], "not a size: 'lots'"),
    (["echo", "--max-size", "12q"], "not a size: '12q'"),
    (["connect", "ws://x/", "--wait", "-1"], "expected 0 or more seconds, or inf"),
    (["connect", "ws://x/", "--wait", "nan"], "expected 0 or more seconds, or inf"),
])
def test_bad_option_values(cli, argv, message):
    status, _, err = cli(*argv)
    assert status == 2 and message in err and "Traceback" not in err


def write_config(tmp_path, data):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("data, message", [
    ({"host": 5}, "bad value for 'host': expected a string, got 5"),
    ({"port": [80]}, "bad value for 'port': expected a number, got [80]"),
    ({"port": True}, "bad value for 'port': expected a number, got True"),
    ({"token": 7}, "bad value for 'token': expected a string or a list of strings, got 7"),
])
def test_config_value_types(cli, tmp_path, data, message):
    status, _, err = cli("serve", "-c", write_config(tmp_path, data))
    assert status == 2 and message in err, err


def test_config_null_keeps_an_unset_default(cli, tmp_path, busy_port):
    # "certfile": null is the default itself (no TLS): accepted, and the server goes on to listen
    # (here on a busy port, so it stops there with exit status 1 rather than a usage error).
    status, _, err = cli("serve", "-c", write_config(tmp_path, {"certfile": None, "port": busy_port}))
    assert status == 1 and "cannot listen on 127.0.0.1:%d" % busy_port in err


@pytest.mark.parametrize("command", [["echo"], ["serve", "-f", "echo"]])
def test_asyncio_busy_port_is_one_line(cli, busy_port, command):
    status, _, err = cli(*command, "--asyncio", "--port", str(busy_port), "--quiet")
    assert status == 1 and err.count("\n") == 1 and "cannot listen on 127.0.0.1:%d" % busy_port in err


class CloseAfterOne(EchoServer):
    def onmessage(self, client, message):
        client.send(message)
        client.close(1000, "done")


def test_connect_insecure_skips_certificate_checks(cli, serve):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, KEY)
    server = serve(CloseAfterOne, ssl=context)
    target = "wss://127.0.0.1:%d/" % server.address[1]  # a self-signed certificate, for another name
    status, out, err = cli("connect", target, "-x", "hi", "--wait", "inf")
    assert status == 1 and "could not connect" in err and "CERTIFICATE_VERIFY_FAILED" in err
    status, out, err = cli("connect", target, "--insecure", "-x", "hi", "--wait", "inf")
    assert (status, out) == (0, "hi\n") and "closed: 1000 done" in err


class Silent(EchoServer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received, self.closes = [], []
        self.closed = threading.Event()

    def onmessage(self, client, message):
        self.received.append(message.payload)  # and no reply

    def onclose(self, client, code, reason):
        self.closes.append(code)
        self.closed.set()


def test_connect_waits_then_closes_1000_when_nothing_comes_back(cli, serve):
    server = serve(Silent)
    status, out, err = cli("connect", url(server), "-x", "one", "-x", "two", "--wait", "0.1")
    assert (status, out) == (0, "") and "closed: 1000" in err
    assert server.closed.wait(TIMEOUT)
    assert server.received == ["one", "two"] and server.closes == [1000]


def test_ctrl_c_while_connecting_exits_130(cli, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(twspy.cli, "connect", interrupted)
    status, out, err = cli("connect", "ws://127.0.0.1:9/")
    assert (status, out, err) == (130, "", "")


def test_importing_main_module_runs_nothing(capsys):
    # Only ``python -m twspy`` runs the command line; an import (a tool scanning modules) does not.
    import importlib

    module = importlib.import_module("twspy.__main__")
    assert module.main is main
    assert capsys.readouterr() == ("", "")


def test_proxy_upstream_proxy_options_exclude_each_other(cli):
    status, _, err = cli("proxy", "--upstream", "ws://127.0.0.1:9/", "--port", "0",
                         "--upstream-proxy", "http://127.0.0.1:9", "--no-upstream-proxy")
    assert status == 2 and "give --upstream-proxy or --no-upstream-proxy, not both" in err


class PingsThenSays(EchoServer):
    def onopen(self, client):
        client.send_ping(b"are you there")
        client.send("hello")
        client.close(1000, "")


def test_connect_shows_no_pings_without_p(cli, serve):
    # Pings are answered (by the connection) but printed only with -P.
    server = serve(PingsThenSays)
    status, out, err = cli("connect", url(server), "--wait", "inf")
    assert (status, out) == (0, "hello\n")
    status, out, err = cli("connect", url(server), "--wait", "inf", "-P")
    assert (status, out) == (0, "< ping are you there\nhello\n")
