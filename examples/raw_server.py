"""Raw frames over `twspy.websocket`, server side: answer each text frame, one client at a time."""

import sys

import twspy

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
with twspy.websocket() as server:
    server.bind(("127.0.0.1", port))
    server.listen()
    print("listening on ws://127.0.0.1:%d/" % server.getsockname()[1], flush=True)
    while True:
        client, address = server.accept()  # runs the opening handshake
        with client:
            frame = client.recv()  # a twspy.Frame, already unmasked
            while frame.opcode != twspy.OPCODE_CLOSE:
                if frame.opcode == twspy.OPCODE_TEXT:
                    client.send(twspy.Frame(twspy.OPCODE_TEXT, b"you said: " + frame.payload))
                frame = client.recv()
            client.send(twspy.ControlFrame(twspy.OPCODE_CLOSE, frame.payload))  # echo the close
