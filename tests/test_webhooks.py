"""Webhooks through the real huggingface_hub client (`create_webhook` ... `delete_webhook`), delivered to a real
HTTP receiver on 127.0.0.1: the Hub's payload (parsed with huggingface_hub's own `WebhookPayload`), the secret in
X-Webhook-Secret and never stored in clear, retries with backoff, the delivery log, and deliveries that were
pending when the server died sent after it restarts."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import LOOPBACK_RECEIVERS, Server, stored_metadata
from huggingface_hub import HfApi, WebhookPayload
from huggingface_hub.errors import HfHubHTTPError

from keephub.config import ConfigError
from keephub.devserver import free_port
from keephub.hub.webhooks import Receivers


class Receiver:
    """A tiny webhook receiver that answers 500 to the first `failures` requests and records every request."""

    def __init__(self, port: int = 0, failures: int = 0) -> None:
        self.received: list[tuple[dict, dict]] = []
        self.failures = failures
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), json.loads(body)))
                failing = len(receiver.received) <= receiver.failures
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_port}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def wait_for(self, count: int, seconds: float = 20) -> list[tuple[dict, dict]]:
        deadline = time.time() + seconds
        while len(self.received) < count and time.time() < deadline:
            time.sleep(0.1)
        assert len(self.received) >= count, f"{len(self.received)} of {count} deliveries arrived: {self.received}"
        return self.received

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver(failures=1)
    yield found
    found.close()


def deliveries(server: Server, token: str, webhook_id: str) -> list[dict]:
    response = httpx.get(f"{server.url}/api/settings/webhooks/{webhook_id}/deliveries",
                         headers={"Authorization": f"Bearer {token}"}, timeout=30)
    response.raise_for_status()
    return response.json()


def settled_deliveries(server: Server, token: str, webhook_id: str) -> list[dict]:
    """The delivery log once what the receiver answered is written back (in batches, just after the send)."""
    deadline = time.time() + 10
    log = deliveries(server, token, webhook_id)
    while any(d["status"] == "pending" for d in log) and time.time() < deadline:
        time.sleep(0.1)
        log = deliveries(server, token, webhook_id)
    return log


def test_webhook_lifecycle_payloads_secret_and_retries(server: Server, api: HfApi, repo_id: str, alice,
                                                       receiver: Receiver) -> None:
    secret = f"whsec-{uuid.uuid4().hex}"
    hook = api.create_webhook(url=receiver.url, watched=[{"type": "user", "name": alice[0]}], secret=secret)
    assert (hook.url, hook.secret, hook.disabled, sorted(hook.domains)) == (receiver.url, None, False,
                                                                            ["discussion", "repo"])
    assert [h.id for h in api.list_webhooks()] == [hook.id] and api.get_webhook(hook.id).watched == hook.watched

    commit = api.upload_file(path_or_fileobj=b"step 100", path_in_repo="checkpoint-100/state.txt", repo_id=repo_id)
    headers, body = receiver.wait_for(2)[1]  # the first attempt got a 500; the retry 2 s later lands
    assert receiver.received[0][1] == body and headers["X-Webhook-Secret"] == secret
    payload = WebhookPayload.model_validate(body)
    assert (payload.event.scope, payload.event.action, payload.repo.name, payload.webhook.id) == (
        "repo.content", "update", repo_id, hook.id)
    assert payload.updatedRefs[0].ref == "refs/heads/main" and payload.updatedRefs[0].newSha == commit.oid
    log = settled_deliveries(server, alice[1], hook.id)
    assert (log[0]["status"], log[0]["attempts"], log[0]["lastStatusCode"]) == ("delivered", 2, 200)

    api.create_tag(repo_id, tag="v1")
    api.create_discussion(repo_id, "Evaluate step 100")
    events = {p.event.scope: p for p in (WebhookPayload.model_validate(b) for _, b in receiver.wait_for(4)[2:])}
    assert events["repo.content"].updatedRefs[0].ref == "refs/tags/v1"  # deliveries may arrive in any order
    assert events["discussion"].discussion.title == "Evaluate step 100"

    api.disable_webhook(hook.id)
    api.upload_file(path_or_fileobj=b"step 200", path_in_repo="checkpoint-200/state.txt", repo_id=repo_id)
    assert len(deliveries(server, alice[1], hook.id)) == 3  # nothing queued while disabled
    assert not api.enable_webhook(hook.id).disabled
    updated = api.update_webhook(hook.id, url=receiver.url + "?v=2", domains=["discussion"])
    assert updated.domains == ["discussion"] and updated.watched == hook.watched
    api.upload_file(path_or_fileobj=b"step 300", path_in_repo="checkpoint-300/state.txt", repo_id=repo_id)
    assert len(deliveries(server, alice[1], hook.id)) == 3  # a commit is a "repo" event, no longer watched

    assert secret.encode() not in stored_metadata(server)
    bob = HfApi(endpoint=server.url, token=server.user()[1])
    with pytest.raises(HfHubHTTPError) as info:
        bob.get_webhook(hook.id)
    assert info.value.response.status_code == 404
    api.delete_webhook(hook.id)
    assert api.list_webhooks() == []


def test_bad_webhooks_are_refused_naming_the_field(server: Server, api: HfApi, alice) -> None:
    watched = [{"type": "user", "name": alice[0]}]
    cases = [
        ({"url": "ftp://example.com/hook", "watched": watched}, "http(s)"),
        ({"url": "file:///etc/passwd", "watched": watched}, "http(s)"),
        ({"url": "http://127.0.0.1:9/hook", "watched": []}, "'watched'"),
        ({"url": "http://127.0.0.1:9/hook", "watched": [{"type": "galaxy", "name": "x"}]}, "'watched'[0]"),
        ({"url": "http://127.0.0.1:9/hook", "watched": watched, "domains": ["everything"]}, "'domains'"),
        ({"url": "http://127.0.0.1:9/hook", "watched": watched, "secret": 7}, "'secret'"),
        ({"jobSourceId": "abc", "watched": watched}, "run_job"),
        # Receivers keephub alone could reach: the test servers allow 127.0.0.1 only (LOOPBACK_RECEIVERS).
        ({"url": "http://127.0.0.2:9/hook", "watched": watched}, "webhook_private_targets"),
        ({"url": "http://[::1]:9/hook", "watched": watched}, "webhook_private_targets"),
        ({"url": "http://[::ffff:10.0.0.1]/hook", "watched": watched}, "private network"),
        ({"url": "http://10.0.0.1/hook", "watched": watched}, "private network"),
        ({"url": "http://169.254.169.254/latest/meta-data", "watched": watched}, "private network"),
        ({"url": "http://100.64.0.1/hook", "watched": watched}, "private network"),
        ({"url": "http://0.0.0.0:9/hook", "watched": watched}, "private network"),
    ]
    for body, words in cases:
        response = httpx.post(f"{server.url}/api/settings/webhooks", json=body, timeout=30,
                              headers={"Authorization": f"Bearer {alice[1]}"})
        assert response.status_code == 400 and words in response.json()["error"], (body, response.text)
    reader = HfApi(endpoint=server.url, token=server.token(alice[0], role="read"))
    with pytest.raises(HfHubHTTPError) as info:
        reader.create_webhook(url="http://127.0.0.1:9/hook", watched=watched)
    assert info.value.response.status_code == 403
    assert api.list_webhooks() == []


def test_pending_deliveries_survive_a_crash(tmp_path: Path) -> None:
    srv = Server(data_dir=tmp_path / "data", port=free_port(), env=LOOPBACK_RECEIVERS)
    srv.start()
    try:
        name, token = srv.user()
        hf = HfApi(endpoint=srv.url, token=token)
        repo = f"{name}/crash-{uuid.uuid4().hex[:6]}"
        hf.create_repo(repo)
        port = free_port()  # nothing listens here yet: every delivery fails and stays pending
        hook = hf.create_webhook(url=f"http://127.0.0.1:{port}/hook", watched=[{"type": "model", "name": repo}])
        commit = hf.upload_file(path_or_fileobj=b"ckpt", path_in_repo="ckpt.txt", repo_id=repo)
        srv.kill()
        late = Receiver(port=port)
        try:
            srv.start()
            _, body = late.wait_for(1, seconds=30)[0]
            assert body["updatedRefs"][0]["newSha"] == commit.oid and body["webhook"]["id"] == hook.id
        finally:
            late.close()
    finally:
        srv.stop()


def test_a_name_is_checked_where_it_resolves_before_each_send() -> None:
    """A webhook saved with a host name is checked when it is sent, against what the name resolves to then."""
    anywhere, loopback_only = Receivers(""), Receivers("127.0.0.1/32")

    async def refusals() -> list[str | None]:
        return [await anywhere.refusal_of("http://localhost:9/hook"),
                await loopback_only.refusal_of("http://localhost:9/hook"),
                await anywhere.refusal_of("http://receiver.invalid/hook")]

    to_localhost, allowed, unresolvable = asyncio.run(refusals())
    assert to_localhost is not None and "localhost is 127.0.0.1" in to_localhost
    assert allowed is None
    assert unresolvable is None  # the send fails on its own, and the delivery log says why
    with pytest.raises(ConfigError, match="webhook_private_targets"):
        Receivers("10.0.0.0/33")

