"""The POST endpoints as a plain ASGI app in front of FastAPI.

Measured on this project's 2-core machine (aiohttp, 32 clients): uvicorn answers a bare
ASGI app for 0.056 ms of server CPU per request and FastAPI's ``/health`` for 0.17 ms.
On the embeddings route it was a third of the event loop's CPU per image (0.33 -> 0.22
ms at 32 clients once routed here), and the event loop shares the GIL with decoding. So
``POST /v1/embeddings`` and ``POST /v1/classify`` are answered here; everything else
(health, metrics, 404/405 in our error shape, the lifespan that starts and stops the
batcher) by FastAPI.

A route handler takes ``(scope, receive)`` and returns ``(status, body, headers)``, the
body as JSON bytes, or None when the client went away before its request was read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Answer = tuple[int, bytes, dict[str, str]]
Handler = Callable[[dict, Callable], Awaitable[Answer | None]]


class ClientGoneError(Exception):
    """The client disconnected before its request body was read."""


def header(scope: dict, name: bytes) -> str | None:
    """A request header's value (``name`` lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(receive: Callable, limit: int, too_large: Callable[[str], Exception]) -> bytes:
    """The whole body; ``too_large(got)`` is raised as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large("more")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class PostRoutes:
    """``app`` with the POST requests to ``routes`` (path -> handler) answered first."""

    def __init__(self, app, routes: dict[str, Handler]):
        self.app = app
        self.routes = routes

    @property
    def state(self):  # the wrapped app's state (is_draining, service)
        return self.app.state

    async def __call__(self, scope, receive, send):
        handler = None
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.routes.get(scope["path"])
        if handler is None:
            return await self.app(scope, receive, send)
        answer = await handler(scope, receive)
        if answer is None:  # nobody to answer
            return
        status, body, headers = answer
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


__all__ = ["ClientGoneError", "PostRoutes", "header", "read_body"]
