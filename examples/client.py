"""`twspy.connect`: a client in a few lines (permessage-deflate is offered by default)."""

import sys

import twspy

url = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000/"
with twspy.connect(url) as conn:
    conn.send("Hello")
    conn.send(b"\x00\x01\x02")
    print(conn.recv(timeout=5))
    print(conn.recv(timeout=5))
print("closed with", conn.close_code)
