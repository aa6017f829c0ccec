"""The hub picture of docs/howto/hub.md, drawn as SVG (standard library only).

    python3 docs/hub_picture.py   # rewrites docs/_static/hub.svg

Two servers with a hub each, their clients, and the Redis stream between them: a publish reaches the
local subscribers at once and the other servers through the stream. ``test/test_docs.py`` checks that the
SVG is current.
"""

from __future__ import annotations

import os
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
SVG = os.path.join(HERE, "_static", "hub.svg")

WIDTH, HEIGHT = 900, 330


def box(x: int, y: int, w: int, h: int, title: str, lines: list[str], fill: str) -> list[str]:
    out = ['<rect x="%d" y="%d" width="%d" height="%d" rx="6" fill="%s" stroke="#4a5568"/>' % (x, y, w, h, fill),
           '<text x="%d" y="%d" font-weight="bold">%s</text>' % (x + 10, y + 20, escape(title))]
    for i, line in enumerate(lines):
        out.append('<text x="%d" y="%d" font-size="11" fill="#2d3748">%s</text>' % (x + 10, y + 38 + i * 15,
                                                                                  escape(line)))
    return out


def arrow(x1: int, y1: int, x2: int, y2: int, label: str = "", dashed: bool = False) -> list[str]:
    dash = ' stroke-dasharray="5,4"' if dashed else ""
    out = ['<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#2b6cb0" stroke-width="1.6"%s marker-end="url(#arrow)"/>'
           % (x1, y1, x2, y2, dash)]
    if label:
        dx = 12 if x1 == x2 else 0  # beside a vertical arrow, above the others
        out.append('<text x="%d" y="%d" font-size="11" fill="#2b6cb0" text-anchor="middle">%s</text>'
                   % ((x1 + x2) // 2 + dx, (y1 + y2) // 2 - 6 + (10 if dx else 0), escape(label)))
    return out


def render() -> str:
    """The SVG text."""
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif" font-size="12" role="img" aria-labelledby="title">'
           % (WIDTH, HEIGHT, WIDTH, HEIGHT),
           '<title id="title">Two servers share topics through Redis: local subscribers first, the others '
           'through a Redis stream</title>',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#2b6cb0"/></marker></defs>',
           '<rect width="100%" height="100%" fill="white"/>']
    out += box(20, 20, 150, 60, "client a", ['publish("chat/x")'], "#f7fafc")
    out += box(20, 110, 150, 60, "client b", ['subscribed "chat/+"'], "#f7fafc")
    out += box(230, 30, 230, 150, "server 1 + Hub (node 3f9a)", [
        "1. local subscribers at once,", "   from the publisher's thread", "2. appends to the stream:",
        "   node, sequence number, topic", "   (pending while Redis is down)"], "#ebf8ff")
    out += box(620, 30, 230, 150, "server 2 + Hub (node 7c01)", [
        "reads the stream from the last", "id it saw; drops duplicates,", "reports gaps (on_gap), skips",
        "its own entries", "3. its local subscribers"], "#ebf8ff")
    out += box(640, 230, 190, 60, "client c", ['subscribed "chat/#"'], "#f7fafc")
    out += box(360, 225, 200, 80, "Redis", ["a stream, trimmed to", "about max_bytes; presence"],
               "#fefcbf")
    out += arrow(170, 50, 228, 60, "")
    out += arrow(228, 130, 172, 140, "1")
    out += arrow(345, 182, 400, 223, "2 append")
    out += arrow(520, 223, 660, 182, "read")
    out += arrow(735, 182, 735, 228, "3")
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open(SVG, "w", encoding="utf-8") as f:
        f.write(render())
    print("wrote %s" % os.path.relpath(SVG))
