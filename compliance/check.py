#!/usr/bin/env python3
"""Check an Autobahn|Testsuite report: list every case that is not OK, fail on real failures.

    python compliance/check.py REPORTDIR [--strict] [--agent NAME] [--verbose]

Reads ``REPORTDIR/index.json`` (``{agent: {case: {"behavior", "behaviorClose",
"remoteCloseCode", "reportfile", ...}}}``) and, for each case that is not OK on both
verdicts, the per-case ``REPORTDIR/<reportfile>`` to show what the fuzzer expected and
what it saw. One line per case, ``FAIL`` in front when it fails the check::

    FAIL 7.3.2     OK / FAILED BY CLIENT  close: expected 1002, got 1002 "close frame with a 1-byte
    payload"  | It is preferred that the server close the TCP connection

(one line in the output), then one count line (the score line of ``summarize.py`` + totals)::

    OK 475 NON-STRICT 2 INFORMATIONAL 6 UNIMPLEMENTED 0 FAILED 11  (247 cases, 16 not OK, 11 failing)

Verdicts FAILED, WRONG CODE, UNCLEAN, FAILED BY CLIENT (and anything unknown) fail the
check; NON-STRICT and INFORMATIONAL are listed but only fail with ``--strict``;
UNIMPLEMENTED (12.*/13.* without permessage-deflate) is listed, never a failure.

Exit status: 0 pass, 1 failures, 2 report missing or unreadable. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["check_report", "main", "FAILING", "BUCKETS"]

BUCKETS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
FAILING = ("FAILED", "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT")
_STRICT_FAILING = ("NON-STRICT", "INFORMATIONAL")


def bucket(verdict: str) -> str:
    """Where a verdict counts in the score line: unknown verdicts count as FAILED."""
    return verdict if verdict in BUCKETS[:-1] else "FAILED"


def case_key(case_id: str) -> tuple[Any, ...]:
    return tuple(int(x) if x.isdigit() else x for x in case_id.split("."))


def _load(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _reason(text: str | None, limit: int = 60) -> str:
    if not text:
        return ""
    text = " ".join(str(text).split())
    return ' "%s"' % (text if len(text) <= limit else text[:limit - 3] + "...")


def _events(events: Any, limit: int = 80) -> str:
    """Compact form of an event list: ``[timeout A, message(text, 16 bytes)]``."""
    if not isinstance(events, list):
        return str(events)
    items = []
    for event in events:
        if isinstance(event, list) and event and event[0] == "message" and len(event) >= 3:
            items.append("message(%s, %d chars)" % ("binary" if event[2] else "text", len(str(event[1]))))
        elif isinstance(event, list):
            items.append(" ".join(str(x) if len(str(x)) <= 16 else "<%d chars>" % len(str(x)) for x in event))
        else:
            items.append(str(event))
    text = "[%s]" % ", ".join(items)
    return text if len(text) <= limit else text[:limit - 4] + "...]"


def describe(case_id: str, entry: dict[str, Any], detail: dict[str, Any] | None, verbose: bool = False) -> str:
    """One line for a non-OK case: verdicts, expected vs observed close, the fuzzer's reason."""
    behavior, close = entry.get("behavior", "MISSING"), entry.get("behaviorClose", "MISSING")
    parts = ["%-9s %s / %s" % (case_id, behavior, close)]
    if detail is None:
        parts.append("close: got %s (per-case report %s missing)" % (entry.get("remoteCloseCode"),
                                                                       entry.get("reportfile")))
        return "  ".join(parts)
    expected = detail.get("expectedClose") or {}
    codes = expected.get("closeCode")
    got = detail.get("remoteCloseCode")
    close_text = "close: expected %s, got %s%s" % (
        "/".join(str(c) for c in codes) if codes else "-",
        "none" if got is None else got, _reason(detail.get("remoteCloseReason")))
    flags = []
    if detail.get("wasClean") is False:
        flags.append("unclean: %s" % (detail.get("wasNotCleanReason") or "?"))
    for key, what in (("wasOpenHandshakeTimeout", "opening handshake timeout"),
                      ("wasCloseHandshakeTimeout", "closing handshake timeout"),
                      ("wasServerConnectionDropTimeout", "server TCP drop timeout")):
        if detail.get(key):
            flags.append(what)
    if flags:
        close_text += " (%s)" % "; ".join(flags)
    parts.append(close_text)
    why = []
    if behavior != "OK":
        ok_events = (detail.get("expected") or {}).get("OK")
        why.append("events: OK wants %s, got %s" % (
            _events(ok_events) if ok_events is not None else "-", _events(detail.get("received"))))
    if close != "OK" and detail.get("resultClose"):
        why.append(str(detail["resultClose"]))
    if why:
        parts.append("| " + " / ".join(" ".join(w.split()) for w in why))
    line = "  ".join(parts)
    if verbose:
        line += "\n          expected events: %s\n          received events: %s" % (
            json.dumps(detail.get("expected")), json.dumps(detail.get("received"))[:300])
    return line


def check_report(reportdir: str, strict: bool = False, agent: str | None = None, verbose: bool = False,
                 out: Any = None) -> int:
    """Print the non-OK cases and the count line of ``reportdir``; return the exit status."""
    out = out or sys.stdout
    index_path = reportdir if reportdir.endswith(".json") else os.path.join(reportdir, "index.json")
    reportdir = os.path.dirname(index_path)
    data = _load(index_path)
    if not isinstance(data, dict) or not data:
        print("check: cannot read a report from %s" % index_path, file=sys.stderr)
        return 2
    if agent is not None:
        if agent not in data:
            print("check: agent %r not in %s (have: %s)" % (agent, index_path, ", ".join(sorted(data))),
                  file=sys.stderr)
            return 2
        data = {agent: data[agent]}
    counts = dict.fromkeys(BUCKETS, 0)
    failing = 0
    not_ok = 0
    n_cases = 0
    lines: list[str] = []
    for name in sorted(data):
        for case_id in sorted(data[name], key=case_key):
            entry = data[name][case_id]
            n_cases += 1
            verdicts = (entry.get("behavior", "MISSING"), entry.get("behaviorClose", "MISSING"))
            for v in verdicts:
                counts[bucket(v)] += 1
            if verdicts == ("OK", "OK"):
                continue
            not_ok += 1
            bad = any(bucket(v) == "FAILED" for v in verdicts) or \
                (strict and any(v in _STRICT_FAILING for v in verdicts))
            failing += bad
            detail = _load(os.path.join(reportdir, entry.get("reportfile") or ""))
            line = describe(case_id, entry, detail, verbose)
            lines.append(("FAIL " if bad else "     ") + line + ("  [%s]" % name if len(data) > 1 else ""))
    for line in lines:
        print(line, file=out)
    print("%s  (%d cases, %d not OK, %d failing%s)" % (
        " ".join("%s %d" % (k, counts[k]) for k in BUCKETS), n_cases, not_ok, failing,
        ", strict" if strict else ""), file=out)
    return 1 if failing else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reportdir", help="report directory (or its index.json)")
    parser.add_argument("--strict", action="store_true", help="NON-STRICT and INFORMATIONAL fail too")
    parser.add_argument("--agent", help="only this agent (default: every agent in the report)")
    parser.add_argument("--verbose", "-v", action="store_true", help="also print expected/received events")
    args = parser.parse_args(argv)
    return check_report(args.reportdir, args.strict, args.agent, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
