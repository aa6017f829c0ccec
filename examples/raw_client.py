"""Raw frames over `twspy.websocket`, client side: the frames are masked for you."""

import sys

import twspy

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
with twspy.websocket(location="/raw") as sock:
    sock.connect(("127.0.0.1", port))  # runs the opening handshake
    sock.send(twspy.Frame(twspy.OPCODE_TEXT, "Hello"))
    print(sock.recv().payload.decode())
    sock.send(twspy.ControlFrame(twspy.OPCODE_CLOSE, b"\x03\xe8"))  # 1000
    print("closed with", sock.recv().unpack_close())
