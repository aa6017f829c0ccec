"""Medians, ratios, targets: the tables printed at the end and the JSON written next to them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from cases import CLIENTS, SCENARIOS, TARGETS, Case
from servers import BASE_KINDS, KINDS, PEERS

__all__ = ["summarize", "tables", "generator_check", "fmt"]

SHORT = {"twspy": "twspy", "twspy-base": "twspy-base", "twspy-asyncio": "twspy-aio",
         "twspy-asyncio-base": "aio-base", "websockets-sync": "ws-sync",
         "websockets-asyncio": "ws-async", "aiohttp": "aiohttp",
         "raw-tcp": "raw-tcp", "websocket-client": "ws-client", "raw": "raw"}
CLIENT_PEERS = ("websockets-sync", "websocket-client")


def fmt(value: float | None) -> str:
    """A number in 4 characters or so: 123k, 12.3k, 1234, 12.3, 1.23."""
    if value is None:
        return "-"
    a = abs(value)
    if a >= 1e6:
        return "%.2fM" % (value / 1e6)
    if a >= 1e5:
        return "%.0fk" % (value / 1e3)
    if a >= 1e4:
        return "%.1fk" % (value / 1e3)
    if a >= 100:
        return "%.0f" % value
    if a >= 10:
        return "%.1f" % value
    return "%.2f" % value


def _median(values: Sequence[float | None]) -> float | None:
    good = [v for v in values if v is not None]
    return statistics.median(good) if good else None


def _ratio(a: float | None, b: float | None, higher_is_better: bool) -> float | None:
    """How many times better ``a`` is than ``b`` (so > 1 is better, whatever the metric)."""
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return a / b if higher_is_better else b / a


def summarize(case: Case, runs: dict[str, list[dict[str, Any]]], metric: str = "value",
              higher_is_better: bool | None = None) -> dict[str, Any]:
    """Medians per server (or client), the best peer, the ratios and the targets of one row."""
    better = case.higher_is_better if higher_is_better is None else higher_is_better
    medians = {name: _median([r.get(metric) for r in rs]) for name, rs in runs.items()}
    errors = {name: sorted({r["error"] for r in rs if r.get("error")}) for name, rs in runs.items()}
    peers = CLIENT_PEERS if case.kind == "client" else PEERS
    limit = "raw" if case.kind == "client" else "raw-tcp"
    peer_values = {p: medians.get(p) for p in peers if medians.get(p) is not None}
    best = None
    if peer_values:
        best = (max if better else min)(peer_values, key=lambda p: peer_values[p])
    me = medians.get("twspy")
    row: dict[str, Any] = {
        "medians": medians, "errors": {k: v for k, v in errors.items() if v}, "best_peer": best,
        "higher_is_better": better,
        "twspy_vs_best": _ratio(me, peer_values.get(best) if best else None, better),
        "twspy_vs_raw": _ratio(me, medians.get(limit), better),
        # the asyncio layer against its natural peer, websockets' asyncio server
        "asyncio_vs_ws_async": _ratio(medians.get("twspy-asyncio"), medians.get("websockets-asyncio"), better),
        # before/after (run.py --base): this tree against the baseline checkout, same run
        "twspy_vs_base": _ratio(me, medians.get("twspy-base"), better),
        "asyncio_vs_base": _ratio(medians.get("twspy-asyncio"), medians.get("twspy-asyncio-base"), better),
        "targets": [],
    }
    if metric == "value":
        for against, minimum in TARGETS.get(case.target, []):
            ratio = row["twspy_vs_best"] if against == "best" else _ratio(me, medians.get(against), better)
            row["targets"].append({"against": against, "min": minimum, "ratio": ratio,
                                   "met": None if ratio is None else ratio >= minimum})
    return row


def _target_text(row: dict[str, Any]) -> str:
    parts = []
    for t in row["targets"]:
        name = "best" if t["against"] == "best" else SHORT.get(t["against"], t["against"])
        status = "?" if t["met"] is None else ("ok" if t["met"] else "MISS")
        parts.append(">=%gx %s %s" % (t["min"], name, status))
    return ", ".join(parts)


def _table(header: list[str], rows: list[Any]) -> str:
    """Aligned columns: the first and last left-aligned, numbers right-aligned; a row that
    is a plain string is a section title printed on its own line."""
    cells_rows = [r for r in rows if not isinstance(r, str)]
    widths = [max(len(r[i]) for r in [header] + cells_rows) for i in range(len(header))]
    lines = []
    for n, r in enumerate([header] + rows):
        if isinstance(r, str):
            lines.append(r)
            continue
        cells = [c.ljust(w) if i == 0 or i == len(r) - 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else "%.2fx" % ratio


def tables(cases: list[Case], summaries: dict[str, dict[str, Any]]) -> str:
    """The servers table (a-e, g) and the clients table (f), one section per scenario."""
    out = []
    server_cases = [c for c in cases if c.kind != "client"]
    if server_cases:
        # The baseline's columns (run.py --base) only when it ran.
        ran = {k for row in summaries.values() for k, v in row["medians"].items() if v is not None}
        kinds = [k for k in KINDS if k not in BASE_KINDS or k in ran]
        base = [k for k in BASE_KINDS if k in ran]
        header = ["case", "unit"] + [SHORT[k] for k in kinds] + ["twspy/best", "twspy/raw", "aio/ws-async"] + \
            (["twspy/base", "aio/base"] if base else []) + ["target"]
        rows: list[Any] = []
        for scenario in sorted(SCENARIOS):
            if scenario == "f":
                continue
            titled = False
            for case in server_cases:
                keys = [case.id] if scenario in case.tags and scenario != "e" else []
                if scenario == "e" and "e" in case.tags:
                    keys = [case.id + ":p50", case.id + ":p99"]
                for key in keys:
                    row = summaries.get(key)
                    if row is None:
                        continue
                    label = case.id if ":" not in key else "latency-1KiB-c%d %s" % (case.conns, key.split(":")[1])
                    unit = "us" if ":" in key else case.unit
                    if not titled:
                        rows.append("(%s) %s" % (scenario, SCENARIOS[scenario]))
                        titled = True
                    best = row["best_peer"]
                    rows.append([label, unit] + [fmt(row["medians"].get(k)) + ("*" if k == best else "")
                                                 if k in case.servers else "" for k in kinds] +
                                [_ratio_text(row["twspy_vs_best"]), _ratio_text(row["twspy_vs_raw"]),
                                 _ratio_text(row.get("asyncio_vs_ws_async"))] +
                                ([_ratio_text(row.get("twspy_vs_base")), _ratio_text(row.get("asyncio_vs_base"))]
                                 if base else []) + [_target_text(row)])
        out.append(_table(header, rows))
        out.append("* best peer. Ratios read 'times as good as': > 1 means twspy is better, also for the "
                   "lower-is-better rows (memory, latency), where the ratio is peer / twspy.")
    client_cases = [c for c in cases if c.kind == "client"]
    if client_cases:
        header = ["case (f)", "unit"] + [SHORT[k] for k in CLIENTS] + ["twspy/best", "twspy/raw"]
        rows = []
        for case in client_cases:
            row = summaries.get(case.id)
            if row is None:
                continue
            best = row["best_peer"]
            rows.append([case.id + (" vs " + SHORT.get(case.server, "?") if getattr(case, "server", None) else ""),
                         case.unit] + [fmt(row["medians"].get(k)) + ("*" if k == best else "") for k in CLIENTS] +
                        [_ratio_text(row["twspy_vs_best"]), _ratio_text(row["twspy_vs_raw"])])
        out.append(_table(header, rows))
        out.append("* best peer client; raw = the bench's raw-socket client (precomputed frames), the limit.")
    notes = sorted({"%s %s: %s" % (case_id, who, e) for case_id, row in summaries.items()
                    for who, errs in row["errors"].items() for e in errs})
    if notes:
        out.append("Notes and errors:\n" + "\n".join("  " + n for n in notes))
    return "\n\n".join(out)


def generator_check(cases: list[Case], runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Is the load generator faster than the servers? Its capacity, measured against raw-tcp.

    On each echo row run against raw-tcp: the generator's CPU time per message gives the
    rate it could drive if the server cost nothing (its processes on the cores it has);
    that capacity must clearly exceed the fastest rate any server reached on the row.
    """
    rows, verdicts = [], []
    for case in cases:
        if case.kind != "echo" or "raw-tcp" not in runs.get(case.id, {}):
            continue
        rs = [r for r in runs[case.id]["raw-tcp"] if r.get("value") is not None]
        if not rs:
            continue
        gen = _median([r.get("gen_cpu_us_per_msg") for r in rs])
        cores = _median([r.get("gen_cores") for r in rs]) or 1
        capacity = cores * 1e6 / gen if gen else None
        fastest = max((v for v in (_median([r.get("msgs_per_s") for r in runs[case.id][name]])
                                   for name in runs[case.id]) if v is not None), default=None)
        margin = capacity / fastest if capacity and fastest else None
        ok = margin is not None and margin >= 1.5
        verdicts.append(ok)
        rows.append({"case": case.id, "raw_msgs_per_s": _median([r.get("msgs_per_s") for r in rs]),
                     "fastest_msgs_per_s": fastest,
                     "server_cpu_us_per_msg": _median([r.get("server_cpu_us_per_msg") for r in rs]),
                     "gen_cpu_us_per_msg": gen, "gen_cores": cores, "capacity_msgs_per_s": capacity,
                     "server_cpu_pct": _median([r.get("server_cpu_pct") for r in rs]),
                     "gen_cpu_pct": _median([r.get("gen_cpu_pct") for r in rs]), "margin": margin, "ok": ok})
    return {"rows": rows, "ok": all(verdicts) if verdicts else None}


def generator_text(check: dict[str, Any]) -> str:
    if not check["rows"]:
        return "Load generator check: no raw-tcp echo runs (run scenario a or b with raw-tcp)."
    header = ["case", "raw-tcp msg/s", "fastest msg/s", "raw us/msg", "gen us/msg", "gen capacity", "margin", ""]
    rows = []
    for r in check["rows"]:
        rows.append([r["case"], fmt(r["raw_msgs_per_s"]), fmt(r["fastest_msgs_per_s"]),
                     fmt(r["server_cpu_us_per_msg"]), fmt(r["gen_cpu_us_per_msg"]),
                     fmt(r["capacity_msgs_per_s"]), _ratio_text(r["margin"]),
                     "ok" if r["ok"] else "GENERATOR-BOUND?"])
    verdict = ("OK: on every row the generator could drive at least 1.5x the fastest server's rate, so the "
               "servers, not the generator, set the pace." if check["ok"] else
               "WARNING: on some rows the generator's capacity is within 1.5x of the fastest server; those "
               "rows may understate the fastest servers.")
    return ("Load generator check: CPU per message measured against the raw TCP echo server; capacity = "
            "generator cores / CPU per message;\nmargin = capacity / fastest server on the row.\n" +
            _table(header, rows) + "\n" + verdict)
