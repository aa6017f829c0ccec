"""The layer diagram of docs/design.md, drawn as SVG from the table below (standard library only).

    python3 docs/layers.py        # rewrites docs/_static/layers.svg

The table is the picture's source: edit it, rerun, commit both (``test/test_docs.py`` checks that the
SVG is current and that every module named exists).
"""

from __future__ import annotations

import os
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
SVG = os.path.join(HERE, "_static", "layers.svg")

# Top to bottom: (layer, what it does, [(box title, modules, one line)]). Imports point down only.
LAYERS = [
    ("on top", "optional, imported by name", [
        ("filters", ["twspy/filters.py"], "servers from filter objects, auth"),
        ("hub", ["twspy/hub.py", "twspy/broker.py", "twspy/topics.py"], "topics, send-to-id, Redis"),
        ("proxy relay", ["twspy/proxy.py"], "clients to an upstream"),
        ("command line", ["twspy/cli.py"], "echo, serve, proxy, connect"),
    ]),
    ("shells", "move bytes, own sockets, threads, timers", [
        ("websocket", ["twspy/websocket.py"], "socket, TLS, buffers"),
        ("Connection", ["twspy/connection.py"], "threads, locks, handlers"),
        ("Server / connect", ["twspy/server.py", "twspy/client.py", "twspy/proxies.py"], "accept loop, URLs"),
        ("asyncio", ["twspy/asyncio/connection.py", "twspy/asyncio/server.py", "twspy/asyncio/client.py"],
         "one event loop"),
        ("ASGI", ["twspy/asgi.py"], "FastAPI on the hub"),
        ("mux channels", ["twspy/mux_channel.py", "twspy/mux_session.py", "twspy/mux_client.py",
                          "twspy/mux_server.py"], "channels"),
    ]),
    ("sans-I/O core", "every rule of a live connection; bytes in, events and bytes out", [
        ("Protocol", ["twspy/protocol.py"], "messages, control frames, close, limits"),
        ("handshake protocols", ["twspy/handshake_protocol.py"], "the opening handshake, both roles"),
    ]),
    ("codecs", "bytes <-> objects, no I/O, no state beyond one call", [
        ("frames", ["twspy/frame.py", "twspy/message.py"], "frames, masking, messages"),
        ("HTTP upgrade", ["twspy/handshake.py", "twspy/uri.py"], "requests, responses, URLs"),
        ("extensions", ["twspy/extension.py", "twspy/permessage_deflate.py", "twspy/deflate_frame.py"],
         "negotiation, deflate codecs"),
        ("mux wire format", ["twspy/mux_frames.py"], "channel ids, control blocks"),
    ]),
]

WIDTH = 1100
LABEL_W = 150
BAND_H = 92
GAP = 22
TOP = 40
FILL = {"on top": "#edf2f7", "shells": "#ebf8ff", "sans-I/O core": "#fefcbf", "codecs": "#f0fff4"}


def modules() -> list[str]:
    """Every file the diagram names (paths from the repository root)."""
    return [m for _, _, boxes in LAYERS for _, files, _ in boxes for m in files]


def file_lines(files: list[str], width: int) -> list[str]:
    """The file names of a box, wrapped to ``width`` characters (``asyncio/``, ``mux_*.py`` for groups)."""
    if files[0].startswith("twspy/asyncio/"):
        return ["asyncio/"]
    names = [os.path.basename(f) for f in files]
    if len(names) > 2 and all(n.startswith("mux_") for n in names):
        return ["mux_*.py"]
    lines = [""]
    for name in names:
        if lines[-1] and len(lines[-1]) + len(name) + 2 > width:
            lines[-1] += ","
            lines.append("")
        lines[-1] = (lines[-1] + ", " + name) if lines[-1] else name
    return lines


def render() -> str:
    """The SVG text."""
    height = TOP + len(LAYERS) * (BAND_H + GAP) + 10
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="sans-serif" font-size="12" role="img" aria-labelledby="title">'
           % (WIDTH, height, WIDTH, height),
           '<title id="title">twspy layers: codecs, the sans-I/O core, shells, and optional layers on top; '
           'imports point down</title>',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#4a5568"/></marker></defs>',
           '<rect width="100%" height="100%" fill="white"/>',
           '<text x="10" y="24" font-size="15" font-weight="bold">twspy: one core, many shells '
           '(imports point down)</text>']
    for i, (layer, role, boxes) in enumerate(LAYERS):
        y = TOP + i * (BAND_H + GAP)
        out.append('<rect x="4" y="%d" width="%d" height="%d" rx="6" fill="%s" stroke="#a0aec0"/>'
                   % (y, WIDTH - 8, BAND_H, FILL[layer]))
        out.append('<text x="14" y="%d" font-weight="bold" font-size="13">%s</text>' % (y + 30, escape(layer)))
        words, line, lines = role.split(), "", []
        for word in words:  # wrap the role into the label column
            if len(line) + len(word) > 22:
                lines.append(line)
                line = ""
            line = (line + " " + word).strip()
        lines.append(line)
        for k, text in enumerate(lines[:3]):
            out.append('<text x="14" y="%d" font-size="10" fill="#4a5568">%s</text>' % (y + 46 + k * 12, escape(text)))
        box_w = (WIDTH - LABEL_W - 16 - 8 * (len(boxes) - 1)) / len(boxes)
        for j, (title, files, line_text) in enumerate(boxes):
            x = LABEL_W + j * (box_w + 8)
            out.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" rx="4" fill="white" stroke="#718096"/>'
                       % (x, y + 8, box_w, BAND_H - 16))
            out.append('<text x="%.1f" y="%d" font-weight="bold">%s</text>' % (x + 8, y + 26, escape(title)))
            for k, names in enumerate(file_lines(files, int((box_w - 12) / 6.1))):  # ~6 px a monospace char
                out.append('<text x="%.1f" y="%d" font-size="10" font-family="monospace" fill="#2d3748">%s</text>'
                           % (x + 8, y + 40 + k * 12, escape(names)))
            out.append('<text x="%.1f" y="%d" font-size="10" fill="#4a5568">%s</text>'
                       % (x + 8, y + BAND_H - 16, escape(line_text)))
        if i + 1 < len(LAYERS):
            ay = y + BAND_H
            out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#4a5568" stroke-width="1.5" '
                       'marker-end="url(#arrow)"/>' % (WIDTH // 2, ay + 2, WIDTH // 2, ay + GAP - 2))
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    with open(SVG, "w", encoding="utf-8") as f:
        f.write(render())
    print("wrote %s" % os.path.relpath(SVG))
