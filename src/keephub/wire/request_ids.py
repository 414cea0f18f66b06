"""An `X-Request-Id` on every response, and on the log lines of the request that failed.

huggingface_hub prints the id with every error it raises, so a user's report names the request, and the
server's log finds it. A client's own id (a proxy's) is kept when it is plain text; otherwise one is made.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keephub.wire import headers

log = logging.getLogger("keephub")
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)
_USABLE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_HEADER = headers.X_REQUEST_ID.lower().encode()


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == _HEADER:
            given = value.decode("latin-1")
            if _USABLE.match(given):
                return given
    return uuid.uuid4().hex


class RequestIds:
    """Outermost middleware: sets the id, adds it to the response, and answers (and logs, with the id) an
    error no handler caught, so that even a 500 carries it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        token = current_request_id.set(request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != _HEADER]
                message = {**message, "headers": [*kept, (_HEADER, request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s (%s %s) failed", request_id, scope.get("method"), scope.get("path"))
            if started:
                raise
            message = f"internal error in keephub; report it with the request id {request_id}"
            response = JSONResponse({"error": message}, status_code=500,
                                    headers={headers.X_ERROR_MESSAGE: message, headers.X_REQUEST_ID: request_id})
            await response(scope, receive, send)
        finally:
            current_request_id.reset(token)
