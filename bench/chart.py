"""The bench's ratios as an SVG bar chart, standard library only (no plotting library).

    python3 bench/chart.py                               # from bench/results/latest.json
    python3 bench/chart.py bench/results/docs.json       # from another run of bench/run.py
    python3 bench/chart.py --from-data                   # redraw from the committed numbers

It writes two files next to the docs: ``docs/_static/bench-ratios.json`` (the numbers shown: one
row per case, twspy ÷ the best peer and twspy ÷ raw TCP, with the run's date, machine and how busy
it was) and ``docs/_static/bench-ratios.svg`` (drawn from that JSON alone, so the picture and the
numbers committed with it always agree; ``test/test_docs.py`` checks that they do).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STATIC = os.path.join(ROOT, "docs", "_static")
DATA = os.path.join(STATIC, "bench-ratios.json")
SVG = os.path.join(STATIC, "bench-ratios.svg")

# Geometry, in SVG user units (pixels at 100 %).
LABEL_W = 330   # case titles
BAR_W = 360     # the bar area; the axis runs from 0 to the largest ratio shown, at least 2x
ROW_H = 34
TOP = 58
FOOT = 80
COLOURS = {"best": "#2b6cb0", "raw": "#a0aec0"}


def extract(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers the chart shows, from a bench/run.py JSON document."""
    rows = []
    for case in results.get("cases", []):
        summary = case.get("summary") or {}
        best, raw = summary.get("twspy_vs_best"), summary.get("twspy_vs_raw")
        if best is None:
            continue
        rows.append({"id": case["id"], "title": case["title"], "unit": case["unit"],
                     "best_peer": summary.get("best_peer"),
                     "twspy_vs_best": round(best, 2),
                     "twspy_vs_raw": None if raw is None else round(raw, 2)})
    busy = results.get("other_processes_cpu") or {}
    return {"date": results.get("date"), "argv": results.get("argv"), "reps": results.get("reps"),
            "machine": results.get("machine"), "versions": results.get("versions"),
            "other_processes_cpu_median_pct": round(busy.get("median_pct") or 0.0),
            "rows": rows}


def render(data: dict[str, Any]) -> str:
    """The SVG for ``data`` (what :func:`extract` returns): two bars per case."""
    rows: list[dict[str, Any]] = data["rows"]
    top = float(max([2.0] + [r["twspy_vs_best"] for r in rows] + [r["twspy_vs_raw"] or 0 for r in rows]))
    width = LABEL_W + BAR_W + 170
    height = TOP + ROW_H * len(rows) + FOOT

    def x(ratio: float) -> float:
        return LABEL_W + BAR_W * ratio / top

    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif" font-size="12" role="img" aria-labelledby="title">'
           % (width, height, width, height),
           '<title id="title">twspy benchmark ratios: twspy / best peer and twspy / raw TCP, per case</title>',
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="10" y="20" font-size="14" font-weight="bold">twspy ÷ best peer, twspy ÷ raw TCP '
           '(above 1: twspy is better)</text>']
    legend_y = 40
    for i, (key, label) in enumerate((("best", "÷ best peer (named)"), ("raw", "÷ raw TCP, same threading"))):
        lx = 10 + i * 220
        out.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>' % (lx, legend_y - 10, COLOURS[key]))
        out.append('<text x="%d" y="%d">%s</text>' % (lx + 18, legend_y, escape(label)))
    # Grid lines at every 0.5 up to the top; 1.0 (parity) drawn darker.
    step, tick = 0.5, 0.0
    while tick <= top + 1e-9:
        colour = "#333" if abs(tick - 1.0) < 1e-9 else "#ddd"
        out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>'
                   % (x(tick), TOP - 6, x(tick), TOP + ROW_H * len(rows), colour))
        out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%g×</text>'
                   % (x(tick), TOP + ROW_H * len(rows) + 14, tick))
        tick += step
    for i, row in enumerate(rows):
        y = TOP + i * ROW_H
        out.append('<text x="%d" y="%d" text-anchor="end">%s</text>' % (LABEL_W - 8, y + 14, escape(row["title"])))
        for j, key in enumerate(("best", "raw")):
            ratio = row["twspy_vs_" + key]
            by = y + 3 + j * 13
            if ratio is None:
                continue
            out.append('<rect x="%d" y="%d" width="%.1f" height="12" fill="%s"/>'
                       % (LABEL_W, by, x(ratio) - LABEL_W, COLOURS[key]))
            note = "%.2f×" % ratio + (" %s" % row["best_peer"] if key == "best" and row.get("best_peer") else "")
            out.append('<text x="%.1f" y="%d" font-size="10">%s</text>' % (x(ratio) + 4, by + 10, escape(note)))
    machine = data.get("machine") or {}
    versions = data.get("versions") or {}
    argv = list(data.get("argv") or [])
    if "--json" in argv:  # where the run wrote its results is no part of what it measured
        del argv[argv.index("--json"):argv.index("--json") + 2]
    foot = ["bench/run.py %s, %s UTC" % (" ".join(argv), (data.get("date") or "")[:16].replace("T", " ")),
            "CPython %s, %s CPUs, twspy %s (C accelerator %s), websockets %s, aiohttp %s" % (
                versions.get("python", "?"), machine.get("cpus", "?"), versions.get("twspy", "?"),
                versions.get("twspy.speedups", "?"), versions.get("websockets", "?"), versions.get("aiohttp", "?")),
            "A busy shared machine: other processes used a median %d%% of one core during the runs; "
            "compare ratios within a row." % data.get("other_processes_cpu_median_pct", 0)]
    for k, line in enumerate(foot):
        out.append('<text x="10" y="%d" font-size="11" fill="#555">%s</text>' % (TOP + ROW_H * len(rows) + 36 + k * 15,
                                                                              escape(line)))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/chart.py", description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default=os.path.join(HERE, "results", "latest.json"),
                        help="a JSON file written by bench/run.py")
    parser.add_argument("--from-data", action="store_true", help="redraw the SVG from %s" % os.path.relpath(DATA))
    args = parser.parse_args(argv)
    if args.from_data:
        with open(DATA, encoding="utf-8") as f:
            data = json.load(f)
    else:
        with open(args.results, encoding="utf-8") as f:
            data = extract(json.load(f))
        with open(DATA, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")
    with open(SVG, "w", encoding="utf-8") as f:
        f.write(render(data))
    print("wrote %s (%d cases)" % (os.path.relpath(SVG), len(data["rows"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
