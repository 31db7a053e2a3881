"""The request size limit: 413 for bodies over ``max_bytes``, without reading them whole.

A declared ``Content-Length`` over the limit is refused before the app sees the request; a body
without one (chunked) is counted as it streams in and cut off once it passes the limit. A refused
upload to ``POST /v1/inspect`` from a client with a valid key is a frame lost: it is kept as a dead
letter (``oversized``, without its bytes), so that the dashboard and the record store count it.
"""

import asyncio
import logging

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.dead_letter import reject
from services.api.auth import key_matches

log = logging.getLogger(__name__)
INSPECT_PATH = "/v1/inspect"


class BodyTooLarge(HTTPException):
    """Raised from ``receive``; an HTTPException, so that FastAPI's body parsing passes it on as is."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {max_bytes} bytes")


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def noting_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, noting_send)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = BodyTooLarge(self.max_bytes)
        if scope.get("path") == INSPECT_PATH and scope.get("method") == "POST":
            await asyncio.to_thread(record_oversized_upload, scope, self.max_bytes)
        await JSONResponse({"detail": error.detail}, error.status_code)(scope, receive, send)


def record_oversized_upload(scope: Scope, max_bytes: int) -> None:
    """Keep a dead letter for an upload refused for its size, when its sender holds a valid key."""
    context = getattr(getattr(scope.get("app"), "state", None), "linewatch", None)
    if context is None:
        return
    headers = Headers(scope=scope)
    key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
    if context.settings.auth_required and not (key and key_matches(key, context.settings.key_hashes)):
        return  # an unknown client's oversized request is refused and not kept
    declared = headers.get("content-length", "")
    size = f"{declared} bytes" if declared.isdigit() else f"more than {max_bytes} bytes"
    client = scope.get("client")
    sender = f" from {client[0]}" if client else ""
    detail = f"request body is larger than the limit of {max_bytes} bytes"
    try:
        context.records.add_dead_letter(reject("ingest", "oversized", detail, f"upload of {size}{sender}"))
        context.metrics.rejected_frames.labels("unknown", "unknown").inc()
    except Exception as err:  # the store may be what failed; the client gets its 413 all the same
        log.error("could not keep the dead letter of an oversized upload: %s", err)
