"""A FastAPI app on the twspy hub: run it on two ports with one TWSPY_REDIS and the clients of
both share topics, send-to-id and broadcast (without it: this process only).

    TWSPY_REDIS=redis://127.0.0.1:6379/0 uvicorn examples.fastapi_hub:app --port 8001
"""

import contextlib
import os

from fastapi import FastAPI, WebSocket

from twspy.asgi import Endpoint
from twspy.hub import Hub, TopicBroadcast

hub = Hub(os.environ.get("TWSPY_REDIS"))
topics = Endpoint(hub=hub, filters=[TopicBroadcast()])  # the hub's JSON protocol
rooms = Endpoint(hub=hub)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    yield
    hub.close()


app = FastAPI(lifespan=lifespan)


@app.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    await topics.serve(websocket.scope, websocket.receive, websocket.send)


@app.websocket("/chat/{room}")
async def chat(websocket: WebSocket, room: str) -> None:
    async with rooms.accept(websocket.scope, websocket.receive, websocket.send) as conn:
        hub.subscribe(conn, "chat/" + room)
        async for message in conn:
            hub.publish("chat/" + room, "%s: %s" % (conn.id, message.payload))
