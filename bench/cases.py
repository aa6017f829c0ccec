"""What the bench measures: the scenarios (a) to (g) as a list of cases, and the targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loadgen import OP_BINARY, OP_TEXT
from servers import KINDS

__all__ = ["Case", "SCENARIOS", "ALIASES", "CLIENTS", "TARGETS", "build_cases", "size_label"]

SCENARIOS = {
    "a": "echo of small text messages (messages/s)",
    "b": "throughput of large binary messages (MiB/s of payload echoed)",
    "c": "connections per second (open handshake, one echo, close)",
    "d": "server memory per idle connection (KiB, VmRSS delta / connections)",
    "e": "latency of 1 KiB text messages, p50 and p99 (microseconds)",
    "f": "client side: client libraries against a fast server (messages/s)",
    "g": "permessage-deflate off and on, 1 KiB JSON text (messages/s)",
}
ALIASES = {"echo": "a", "throughput": "b", "connect": "c", "connections": "c", "memory": "d", "latency": "e",
           "client": "f", "clients": "f", "deflate": "g", "compression": "g"}

# The clients of scenario (f): "raw" is the bench's own raw-socket client, the limit.
CLIENTS = ("twspy", "websockets-sync", "websocket-client", "raw")

# Targets: (class of case, what twspy is compared to, minimum ratio; for "lower is better"
# metrics the ratio is inverted first, so every target reads "at least N times as good").
# Large messages (issue 13, with the C accelerator): 64 KiB and 1 MiB >= 1.5x the best peer,
# 16 MiB >= 1.2x; the client sending 1 MiB >= 1.5x websockets' sync client.
TARGETS: dict[str, list[tuple[str, float]]] = {
    "small": [("best", 1.5), ("raw-tcp", 0.7)],
    "large": [("best", 1.5), ("raw-tcp", 0.6)],
    "huge": [("best", 1.2), ("raw-tcp", 0.6)],
    "client-large": [("websockets-sync", 1.5)],
    "connect": [("websockets-sync", 1.5)],
    "memory": [("websockets-sync", 1.0)],
}


def size_label(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return "%d MiB" % (n >> 20)
    if n >= 1 << 10 and n % (1 << 10) == 0:
        return "%d KiB" % (n >> 10)
    return "%d B" % n


class Case:
    """One measurement, run against each of ``servers`` (or ``clients``) ``reps`` times."""

    def __init__(self, id: str, scenario: str, title: str, kind: str, unit: str, higher_is_better: bool = True,
                 size: int = 16, opcode: int = OP_TEXT, conns: int = 1, depth: int = 1, payload: str = "plain",
                 deflate: bool = False, servers: Sequence[str] = KINDS, target: str = "",
                 latency: bool = False, warmup: float = 0.3, duration: float = 1.0,
                 tags: Sequence[str] = ()) -> None:
        self.id, self.scenario, self.title, self.kind, self.unit = id, scenario, title, kind, unit
        self.higher_is_better = higher_is_better
        self.size, self.opcode, self.conns, self.depth = size, opcode, conns, depth
        self.payload, self.deflate, self.servers, self.target = payload, deflate, tuple(servers), target
        self.latency, self.warmup, self.duration = latency, warmup, duration
        self.tags = {scenario, *tags}

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if k != "tags"}
        data["tags"] = sorted(self.tags)
        return data


def build_cases(quick: bool, scenarios: set | None, duration: float | None = None,
                idle_conns: int | None = None) -> list[Case]:
    d = duration if duration is not None else (0.4 if quick else 0.8)
    w = 0.15 if quick else 0.2
    cases: list[Case] = []

    # (a) echo, and (e) latency from the 1 KiB one-in-flight runs
    # 1 connection and 32, one message in flight each; and pipelined: 1 connection, 16 in flight.
    shapes = [(16, 1, 1), (16, 32, 1), (16, 1, 16), (1024, 1, 1), (1024, 32, 1)] if quick else \
        [(size, conns, depth) for size in (16, 1024) for conns, depth in ((1, 1), (32, 1), (1, 16))]
    for size, conns, depth in shapes:
        latency = size == 1024 and depth == 1
        cases.append(Case(
            "echo-%s-c%d-d%d" % (size_label(size).replace(" ", ""), conns, depth), "a",
            "echo %s text, %d conn%s x %d in flight" % (size_label(size), conns, "s" if conns > 1 else "", depth),
            "echo", "msg/s", size=size, conns=conns, depth=depth, target="small", latency=latency,
            warmup=w, duration=d, tags=("e",) if latency else ()))

    # (b) throughput
    for size in ((1 << 20,) if quick else (64 << 10, 1 << 20, 16 << 20)):
        cases.append(Case(
            "throughput-%s" % size_label(size).replace(" ", ""), "b",
            "echo %s binary, 1 conn x 2 in flight" % size_label(size), "echo", "MiB/s", size=size,
            opcode=OP_BINARY, conns=1, depth=2, target="huge" if size >= 16 << 20 else "large", warmup=0.3,
            duration=d * (1.5 if size >= 16 << 20 else 1.25)))

    # (c) connections per second, 4 clients in a loop
    cases.append(Case("connect-c4", "c", "open + echo 16 B + close, 4 clients in a loop", "connect", "conn/s",
                      conns=4, target="connect", warmup=w, duration=d))

    # (d) memory
    n = idle_conns or (200 if quick else 1000)
    cases.append(Case("memory-%d" % n, "d", "VmRSS per idle connection, %d connections" % n, "memory", "KiB/conn",
                      higher_is_better=False, conns=n, target="memory"))

    # (f) clients
    for size in ((16,) if quick else (16, 1024)):
        cases.append(Case("client-%s" % size_label(size).replace(" ", ""), "f",
                          "client echo %s text, 1 conn x 1 in flight" % size_label(size), "client", "msg/s",
                          size=size, servers=CLIENTS, warmup=w, duration=d))
    if not quick:  # the client's large-message path: masking 1 MiB per message
        cases.append(Case("client-1MiB", "f", "client echo 1 MiB binary, 1 conn x 1 in flight", "client", "msg/s",
                          size=1 << 20, opcode=OP_BINARY, servers=CLIENTS, target="client-large",
                          warmup=w, duration=d * 1.25))

    # (g) permessage-deflate
    ws_servers = tuple(k for k in KINDS if k != "raw-tcp")
    cases.append(Case("deflate-off-1KiB-json", "g", "1 KiB JSON text, compression off, 32 conns x 1", "echo",
                      "msg/s", size=1024, conns=32, payload="json", servers=KINDS, warmup=w, duration=d))
    cases.append(Case("deflate-on-1KiB-json", "g", "1 KiB JSON text, permessage-deflate, 32 conns x 1", "echo",
                      "msg/s", size=1024, conns=32, payload="json", deflate=True, servers=ws_servers,
                      warmup=w, duration=d))

    if scenarios:
        cases = [c for c in cases if c.tags & scenarios]
    return cases

