"""mux: several logical channels over one connection, each served as a client of its own (twspy to twspy)."""

import twspy


class Echo(twspy.Server):
    def onmessage(self, client, message):
        client.send("%s says %s" % (client.path, message.payload))


with Echo(("127.0.0.1", 0), extensions=[twspy.Multiplex()]) as server:
    server.serve_in_thread()
    with twspy.connect_multiplexed("ws://127.0.0.1:%d/main" % server.address[1], timeout=5) as mux:
        chat = mux.open_channel("/chat")
        news = mux.open_channel("/news")
        mux.default_channel.send("hi")
        chat.send("hello")
        news.send("hey")
        print(mux.default_channel.recv(timeout=5))
        print(chat.recv(timeout=5))
        print(news.recv(timeout=5))
