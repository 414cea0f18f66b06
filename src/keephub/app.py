"""`build_app(settings)`: the whole server as data — routes, middleware, error handlers, lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from email.utils import formatdate
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keephub import hub, jobs, mcp, web, xet
from keephub.buckets import routes as bucket_routes
from keephub.buckets.service import Buckets
from keephub.config import Settings
from keephub.durability.gate import PreflightGate
from keephub.hub import community_routes, git_http, social_routes
from keephub.hub.discussions import Discussions
from keephub.hub.webhooks import Dispatcher, Receivers, Webhooks
from keephub.storage.blobs import BlobStore, open_blob_stores
from keephub.storage.db import open_database
from keephub.web.sessions import Sessions
from keephub.wire.errors import HubError, header_safe, render_hub_error
from keephub.wire.request_ids import RequestIds
from keephub.wire.route_index import RouteIndex

log = logging.getLogger("keephub")
JANITOR_INTERVAL_SECONDS = 3600


def open_hub(settings: Settings) -> hub.Hub:
    """Open (and migrate) the stores named by `settings`; used by the server and the admin CLI alike."""
    db = open_database(settings)
    stores = open_blob_stores(settings)
    return hub.Hub(settings, db, stores.lfs, xet.Cas(settings, db, stores.xorbs))


async def _janitor(store: BlobStore, max_age: float) -> None:
    """Sweep temporary files and abandoned multipart uploads so interrupted uploads never pile up."""
    while True:
        removed = await asyncio.to_thread(store.sweep_stale, max_age)
        if removed:
            log.info("janitor removed %d stale upload file(s)", removed)
        await asyncio.sleep(JANITOR_INTERVAL_SECONDS)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}; see docs/api.md for what keephub serves"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return JSONResponse({"error": message}, status_code=exc.status_code,
                        headers={**(exc.headers or {}), "X-Error-Message": header_safe(message)})


async def _client_gone(request: Request, exc: Exception) -> Response:
    """A client that hangs up mid-body (an interrupted upload) is not a server error: no traceback, no 500."""
    return Response(status_code=400)


class FreshDate:
    """A `Date` header exact to the second on every response.

    uvicorn's own is refreshed about once a second, and huggingface_hub's `fetch_job_logs(follow=False)` drops
    log lines stamped more than a second after the response's Date, so a stale Date loses a job's last lines.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._second = 0
        self._date = b""

    def now(self) -> bytes:
        """The header's value for the current second, formatted once per second (responses are sent from the
        event loop's thread alone)."""
        second = int(time.time())
        if second != self._second:
            self._second, self._date = second, formatdate(second, usegmt=True).encode()
        return self._date

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_date(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                headers.append((b"date", self.now()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_date)


def build_app(settings: Settings) -> Starlette:
    settings = settings.with_signing_key()
    mcp_endpoint = mcp.Endpoint()
    receivers = Receivers(settings.webhook_private_targets)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        the_hub = await asyncio.to_thread(open_hub, settings)
        app.state.hub = the_hub
        app.state.buckets = Buckets(the_hub)
        app.state.sessions = Sessions(the_hub.db, the_hub.accounts)
        gate = PreflightGate()
        app.state.jobs = jobs.JobService(settings, the_hub, gate)
        app.state.scheduler = jobs.Scheduler(settings, the_hub.db, app.state.jobs)
        app.state.scheduled_jobs = app.state.scheduler.scheduled
        app.state.discussions = Discussions(settings, the_hub.db)
        app.state.webhooks = Webhooks(the_hub.db, app.state.jobs.box, receivers)
        background = [
            asyncio.create_task(_janitor(the_hub.blobs, settings.stale_upload_seconds)),
            asyncio.create_task(_janitor(the_hub.cas.xorbs, settings.stale_upload_seconds)),
            asyncio.create_task(app.state.scheduler.run()),
            asyncio.create_task(Dispatcher(the_hub.db, app.state.jobs.box, receivers).run()),
        ]
        # What start-up built (modules, the app, SQLAlchemy's mappers) lives as long as the process: frozen, it is
        # left out of every later garbage collection, each of which walked all of it (a few ms per full pass).
        gc.freeze()
        try:
            async with mcp_endpoint.running():
                yield
        finally:
            for task in background:
                task.cancel()
            gate.close()
            the_hub.db.close()

    return Starlette(
        routes=[RouteIndex(mcp_endpoint.routes() + jobs.routes() + xet.routes() + bucket_routes.routes()
                           + community_routes.routes() + social_routes.routes() + hub.routes()
                           + git_http.routes() + web.routes())],
        middleware=[Middleware(RequestIds), Middleware(FreshDate), Middleware(hub.EncodedSlashes)],
        exception_handlers={HubError: render_hub_error, HTTPException: _http_error,
                            ClientDisconnect: _client_gone},
        lifespan=lifespan,
    )
