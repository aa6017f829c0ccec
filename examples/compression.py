"""permessage-deflate, configured on both ends (it is on by default; extensions=[] turns it off)."""

import twspy


class Echo(twspy.Server):
    def onmessage(self, client, message):
        client.send(message)


extension = twspy.DeflateMessage(server_no_context_takeover=True, client_max_window_bits=12, threshold=64)
with Echo(("127.0.0.1", 0), extensions=[extension]) as server:
    server.serve_in_thread()
    url = "ws://127.0.0.1:%d/" % server.address[1]
    with twspy.connect(url, extensions=[twspy.DeflateMessage(client_max_window_bits=12)]) as conn:
        print([codec.name for codec in conn.sock.extensions])
        conn.send('{"event": "tick", "values": [1, 2, 3]}' * 20)
        print(len(conn.recv(timeout=5).payload))
        conn.send("a secret next to attacker-chosen text", compress=False)
        print(conn.recv(timeout=5))
