"""HTTP handlers of the Jobs API (`/api/jobs/...`), as huggingface_hub's run_job, fetch_job_logs & co. call them."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import BaseRoute, Route

from keephub.hub.routes import actor_of, call, read_json
from keephub.jobs import agent_api
from keephub.jobs.logs import LogCursor
from keephub.jobs.scheduled import ScheduledJobs
from keephub.jobs.scheduler import Scheduler
from keephub.jobs.service import TERMINAL, JobService
from keephub.wire import BadRequest
from keephub.wire.errors import Unprocessable
from keephub.wire.params import int_param

KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 0.2

# The most lines one tail read returns (a tail costs what it returns: see logs.LogCursor.seek_tail).
MAX_TAIL_LINES = 1_000_000


def jobs_of(request: Request) -> JobService:
    return request.app.state.jobs


def scheduler_of(request: Request) -> Scheduler:
    return request.app.state.scheduler


async def hardware(request: Request) -> JSONResponse:
    return JSONResponse(jobs_of(request).hardware())


async def jobs_collection(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    namespace = request.path_params["namespace"]
    service = jobs_of(request)
    if request.method == "POST":
        info = await call(service.submit, actor, namespace, await read_json(request, Unprocessable))
        scheduler_of(request).poke()
        return JSONResponse(info)
    stages = request.query_params.getlist("stage")
    labels = request.query_params.getlist("label")
    return JSONResponse(await call(service.list, actor, namespace, stages, labels))


async def job_info(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    params = request.path_params
    return JSONResponse(await call(jobs_of(request).get, actor, params["namespace"], params["job_id"]))


async def cancel(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    params = request.path_params
    await call(jobs_of(request).cancel, actor, params["namespace"], params["job_id"])
    await call(scheduler_of(request).request_cancel, params["job_id"])
    return JSONResponse({})


async def logs(request: Request) -> StreamingResponse:
    """Server-sent events, one per log line; the stream stays open until the job ends (follow).

    Memory stays bounded whatever the log's size: a tail is found by reading backwards from the end, the
    log is sent a page at a time, and the next page is read only once the client has taken the last one
    (uvicorn holds a send while the socket's buffer is full), so a slow client never makes keephub read ahead.
    """
    actor = await actor_of(request)
    namespace, job_id = request.path_params["namespace"], request.path_params["job_id"]
    service = jobs_of(request)
    await call(service.get, actor, namespace, job_id)
    tail = int_param(request.query_params, "tail", minimum=0, maximum=MAX_TAIL_LINES, hint=" (lines)")
    cursor = LogCursor(service.jobs_dir, job_id)

    async def stream() -> AsyncIterator[bytes]:
        if tail is not None:
            await asyncio.to_thread(cursor.seek_tail, tail)
        quiet = 0.0
        while True:
            finished = (await call(service.load, namespace, job_id)).job.stage in TERMINAL
            sent = False
            while page := await asyncio.to_thread(cursor.read_page):
                sent = True
                yield b"".join(b"data: " + event + b"\n\n" for event in page)
            if finished:
                return
            quiet = 0.0 if sent else quiet + POLL_SECONDS
            if quiet >= KEEPALIVE_SECONDS:
                quiet = 0.0
                yield b": keep-alive\n\n"
            await asyncio.sleep(POLL_SECONDS)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def scheduled_of(request: Request) -> ScheduledJobs:
    return request.app.state.scheduled_jobs


async def scheduled_collection(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    namespace = request.path_params["namespace"]
    if request.method == "POST":
        body = await read_json(request, Unprocessable)
        return JSONResponse(await call(scheduled_of(request).create, actor, namespace, body))
    return JSONResponse(await call(scheduled_of(request).list, actor, namespace))


async def scheduled_item(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    namespace, scheduled_id = request.path_params["namespace"], request.path_params["scheduled_id"]
    service = scheduled_of(request)
    if request.method == "DELETE":
        await call(service.delete, actor, namespace, scheduled_id)
        return JSONResponse({})
    return JSONResponse(await call(service.get, actor, namespace, scheduled_id))


async def scheduled_action(request: Request) -> JSONResponse:
    actor = await actor_of(request)
    namespace, scheduled_id = request.path_params["namespace"], request.path_params["scheduled_id"]
    action = request.path_params["action"]
    service = scheduled_of(request)
    if action in ("suspend", "resume"):
        result = await call(service.set_suspended, actor, namespace, scheduled_id, action == "suspend")
    elif action == "schedule":
        body = await read_json(request, Unprocessable)
        result = await call(service.set_schedule, actor, namespace, scheduled_id, body)
    elif action == "run":
        result = await call(service.trigger, actor, namespace, scheduled_id)
        scheduler_of(request).poke()
    else:
        raise BadRequest(f"unknown scheduled-job action {action!r}; use suspend, resume, schedule or run")
    return JSONResponse(result)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/scheduled-jobs/{namespace}", scheduled_collection, methods=["GET", "POST"]),
        Route("/api/scheduled-jobs/{namespace}/{scheduled_id}", scheduled_item, methods=["GET", "DELETE"]),
        Route("/api/scheduled-jobs/{namespace}/{scheduled_id}/{action}", scheduled_action, methods=["POST"]),
        Route("/api/jobs/hardware", hardware, methods=["GET"]),
        Route("/api/jobs/{namespace}", jobs_collection, methods=["GET", "POST"]),
        Route("/api/jobs/{namespace}/{job_id}", job_info, methods=["GET"]),
        Route("/api/jobs/{namespace}/{job_id}/cancel", cancel, methods=["POST"]),
        Route("/api/jobs/{namespace}/{job_id}/logs", logs, methods=["GET"]),
        *agent_api.routes(),
    ]
