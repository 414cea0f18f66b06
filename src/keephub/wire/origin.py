"""Where a request came from, as far as the transport tells."""

from __future__ import annotations

from starlette.requests import Request


def through_unix_socket(request: Request) -> bool:
    """Whether the request arrived on one of keephub's Unix sockets: the jobs socket, which sandboxes (and Slurm
    agents on this machine) reach keephub through. uvicorn reports such a server address without a port.

    Jobs in isolated networks reach keephub and nothing else, so they must get bytes from keephub itself, not a
    redirect to an object store they cannot reach."""
    server = request.scope.get("server")
    return server is None or server[1] is None
