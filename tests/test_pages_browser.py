"""The web pages in a real browser: Chromium (the system's, driven by Playwright) against the live server.

Sign in with a password or a token, browse a repo into nested folders, open files, switch to a rescue branch,
watch a job's log and training curve grow live, cancel it and read its verdict; private pages stay invisible to
others, forms refuse a session cookie without the CSRF token, and `<script>` pushed anywhere stays text.
Screenshots of the main pages go to docs/screenshots/ (with KEEPHUB_UPDATE_SCREENSHOTS=1, or when missing).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import struct
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import JOB_XET_ENV, SESSION_DIR, WAIT_ON_HUB, Server
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError
from playwright.sync_api import Browser, Page, expect, sync_playwright

from keephub.devserver import keephub_cli

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
PASSWORD = "correct horse battery staple"
SCRIPT = "<script>window.injected = 1</script>"
IMAGE_MARKUP = '<img src=x onerror="window.injected=1">'  # no slash: it fits in a file name
WIDE, NARROW = {"width": 1280, "height": 800}, {"width": 390, "height": 800}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup.sh, which installs Debian's chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def user_with_password(server: Server) -> tuple[str, str]:
    name, token = server.user()
    keephub_cli(server.data_dir, "user", "passwd", name, stdin=PASSWORD + "\n")
    return name, token


def watched_page(browser: Browser, viewport: dict = WIDE) -> Page:
    """A fresh browser context's page that fails the test on any script error or dialog (an injected script)."""
    page = browser.new_context(viewport=viewport).new_page()
    page.on("dialog", lambda dialog: pytest.fail(f"a page opened a dialog: {dialog.message}"))
    page.on("pageerror", lambda error: pytest.fail(f"a page raised: {error}"))
    return page


def sign_in(page: Page, server: Server, username: str = "", password: str = "", token: str = "") -> None:
    page.goto(f"{server.url}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")


def no_horizontal_overflow(page: Page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1")


def screenshot(page: Page, name: str) -> None:
    """A screenshot for docs/pages.md: written to docs/screenshots/ when KEEPHUB_UPDATE_SCREENSHOTS=1 or missing
    there (so ordinary runs leave the shared tree unchanged), otherwise to the test session's directory."""
    folder = SCREENSHOTS
    if os.environ.get("KEEPHUB_UPDATE_SCREENSHOTS") != "1" and (SCREENSHOTS / f"{name}.png").exists():
        folder = SESSION_DIR / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"))
    assert (folder / f"{name}.png").stat().st_size > 10_000, "a blank screenshot"


def safetensors_bytes() -> bytes:
    header = json.dumps({"embed.weight": {"dtype": "BF16", "shape": [300, 64], "data_offsets": [0, 38400]},
                         "head.bias": {"dtype": "F32", "shape": [300], "data_offsets": [38400, 39600]},
                         "__metadata__": {"format": "pt"}}).encode()
    return struct.pack("<Q", len(header)) + header + bytes(39600)


def trainer_state(steps: int) -> bytes:
    history = [{"step": s, "loss": round(3.0 / (1 + s / 10), 4), "learning_rate": 1e-4 * (1 - s / 400)}
               for s in range(5, steps + 1, 5)]
    history.append({"step": steps, "eval_loss": round(3.2 / (1 + steps / 10), 4)})
    return json.dumps({"global_step": steps, "log_history": history}).encode()


def test_sign_in_browse_a_repo_and_find_the_rescue_branch(server: Server, browser: Browser) -> None:
    name, token = user_with_password(server)
    api = HfApi(endpoint=server.url, token=token)
    repo = f"{name}/tiny-llm"
    api.create_repo(repo)
    card = ("---\nlicense: mit\n---\n# tiny-llm\n\nA model card " + SCRIPT + " with a long code block:\n\n```\n"
            + "x = 1  # " + "a-very-long-line-" * 40 + "\n```\n")
    operations = [CommitOperationAdd("README.md", card.encode()),
                  CommitOperationAdd("model.safetensors", safetensors_bytes()),
                  CommitOperationAdd("src/deep/nested/train.py", b"def train(steps: int) -> None:\n    pass\n"),
                  CommitOperationAdd(f"notes/{IMAGE_MARKUP}.txt", b"a file name with markup\n")]
    operations += [CommitOperationAdd(f"checkpoint-{step}/trainer_state.json", trainer_state(step))
                   for step in (50, 100)]
    api.create_commit(repo, operations=operations, commit_message=f"first weights {SCRIPT}")
    api.create_branch(repo, branch="rescue/job-0123abcd")
    api.upload_file(path_or_fileobj=trainer_state(150), path_in_repo="checkpoint-150/trainer_state.json",
                    repo_id=repo, revision="rescue/job-0123abcd", commit_message="rescue checkpoint-150")

    page = watched_page(browser)
    # A wrong password and an unknown user read the same.
    sign_in(page, server, name, "not the password")
    wrong = page.locator("[role=alert]").inner_text()
    sign_in(page, server, f"nobody-{uuid.uuid4().hex[:6]}", PASSWORD)
    assert page.locator("[role=alert]").inner_text() == wrong and "Wrong username or password" in wrong
    sign_in(page, server, name, PASSWORD)
    expect(page.locator("header nav")).to_contain_text(name)
    cookie = next(c for c in page.context.cookies() if c["name"] == "keephub_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    page.goto(f"{server.url}/{repo}")
    names = page.locator("table.files td:first-child").all_inner_texts()
    assert names.index("checkpoint-50/") < names.index("checkpoint-100/"), names
    assert page.locator("article.card").inner_text().count("<script>") == 1
    assert no_horizontal_overflow(page), "the model card's code block must scroll inside itself"
    expect(page.locator("section.curves img.curve")).to_have_count(2)  # loss (+ eval_loss), learning rate
    assert "100 steps" in page.locator("section.curves").inner_text()
    screenshot(page, "repo")

    page.click("text=src")
    page.click("text=deep")
    page.click("text=nested")
    expect(page.locator("nav.crumbs")).to_contain_text("tiny-llm / src / deep / nested")
    page.click("text=train.py")
    expect(page.locator(".code .highlight")).to_contain_text("def train")
    assert page.locator(".code .highlight span.k").count() > 0, "Python is highlighted"
    page.goto(f"{server.url}/{repo}/blob/main/model.safetensors")
    summary = page.locator("#safetensors").inner_text()
    assert "2" in summary and f"{300 * 64 + 300:,}" in summary and "BF16" in summary and "F32" in summary
    screenshot(page, "file-safetensors")
    with page.expect_download() as download:
        page.click("text=download")
    assert Path(download.value.path()).read_bytes() == safetensors_bytes()

    page.goto(f"{server.url}/{repo}/tree/main/notes")
    expect(page.locator("table.files")).to_contain_text(IMAGE_MARKUP + ".txt")

    page.goto(f"{server.url}/{repo}")
    page.click("details.refs summary")
    expect(page.locator("details.refs")).to_contain_text("rescue/job-0123abcd")
    page.click("text=rescue/job-0123abcd")
    expect(page.locator("details.refs summary")).to_contain_text("rescue/job-0123abcd")
    expect(page.locator("table.files")).to_contain_text("checkpoint-150")
    assert "150 steps" in page.locator("section.curves").inner_text()

    page.click("text=history")
    expect(page.locator("table.history")).to_contain_text("rescue checkpoint-150")
    page.click(f"text=first weights {SCRIPT}")
    changes = page.locator("table.changes").inner_text()
    assert "src/deep/nested/train.py" in changes and f"notes/{IMAGE_MARKUP}.txt" in changes

    api.create_discussion(repo, title=f"question {SCRIPT}", description=f"a comment {SCRIPT}")
    page.goto(f"{server.url}/{repo}")
    page.click("text=discussions")
    page.click(f"text=question {SCRIPT}")
    expect(page.locator("#discussion-title")).to_contain_text(f"question {SCRIPT}")
    expect(page.locator("ol.events .comment")).to_have_text(f"a comment {SCRIPT}")

    page.set_viewport_size(NARROW)
    page.goto(f"{server.url}/{repo}")
    assert no_horizontal_overflow(page), "the repo page fits a narrow screen"
    assert page.evaluate("window.injected") is None


JOB_SCRIPT = WAIT_ON_HUB + textwrap.dedent('''
    import json, os, time
    os.makedirs("out")
    with open("out/notes.txt", "w") as notes:  # a top-level output file: pushed at the end, or rescued
        notes.write("training notes")
    history = []
    for step in range(1, 1000):
        print(f"step {step} loss {3.0 / step:.3f} <script>window.injected = 1</script>", flush=True)
        history.append({"step": step, "loss": 3.0 / step, "learning_rate": 1e-4})
        if step % 10 == 0:
            os.makedirs(f"out/checkpoint-{step}")
            with open(f"out/checkpoint-{step}/trainer_state.json", "w") as state:
                json.dump({"global_step": step, "log_history": history}, state)
            wait_on_hub(f"checkpoint-{step}/trainer_state.json", 60, 0.1)
        time.sleep(0.3)
''')


def test_watch_a_job_live_cancel_it_and_read_the_verdict(server: Server, browser: Browser) -> None:
    name, token = user_with_password(server)
    api = HfApi(endpoint=server.url, token=token)
    repo = f"{name}/live-run"
    job = api.run_job(image="ghcr.io/astral-sh/uv:python3.12-bookworm", command=["python", "-c", JOB_SCRIPT],
                      env={"REPO": repo, **JOB_XET_ENV}, secrets={"HF_TOKEN": "$HF_TOKEN"}, namespace=name,
                      labels={"keephub.repo": repo, "keephub.output-dir": "out", "keephub.preflight": "override",
                              "note": SCRIPT})
    page = watched_page(browser)
    # The URL a client prints, opened signed out: a page offering to sign in, then the job itself.
    page.goto(f"{server.url}/jobs/{name}/{job.id}")
    expect(page.locator("main")).to_contain_text("Sign in")
    page.click("a.button")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(f"/jobs/{name}/{job.id}$"))

    log = page.locator("#log")
    expect(log).to_contain_text("step 3 ", timeout=120_000)
    page.reload()
    shown = log.inner_text().count("\n")
    expect(log).to_contain_text("step 12 ", timeout=60_000)  # arrived while the page stayed open
    assert log.inner_text().count("\n") > shown
    status = page.locator("#curve-status")
    expect(status).to_contain_text("10 steps", timeout=60_000)
    expect(status).to_contain_text("20 steps", timeout=60_000)
    assert log.inner_text().count("<script>") > 3 and page.evaluate("window.injected") is None
    expect(page.locator("#stage")).to_have_text("RUNNING")
    expect(page.locator("table.pushes")).to_contain_text("checkpoint-20")  # pushes show as they land
    page.click("details.preflight summary")
    expect(page.locator("details.preflight pre")).to_contain_text("===== keephub preflight")
    screenshot(page, "job-running")

    page.click("#cancel-form button")
    expect(page.locator("#stage")).to_have_text("CANCELED", timeout=120_000)
    expect(page.locator("#durability h2")).to_have_text("Durability: rescued", timeout=60_000)  # no reload
    verdict = page.locator("#durability").inner_text()
    assert "Durability: rescued" in verdict and f"rescue/{job.id}" in verdict, verdict
    assert "verified" in page.locator("table.pushes").inner_text()
    assert page.locator("#cancel-form").count() == 0
    screenshot(page, "job-verdict")
    page.click("#rescue-link")
    expect(page.locator("table.files")).to_contain_text("checkpoint-")
    page.click("details.refs summary")
    expect(page.locator("details.refs")).to_contain_text(f"rescued by job {job.id[:12]}")
    page.click(f"details.refs a[href='/jobs/{name}/{job.id}']")
    expect(page.locator("h1")).to_contain_text(job.id)

    # The rescue offered as a pull request into main, reviewed and merged from its page.
    page.click("#rescue-pr-form button")
    expect(page).to_have_url(re.compile(f"/{repo}/discussions/1$"))
    expect(page.locator("#discussion-status")).to_have_text("open")
    expect(page.locator("table.changes")).to_contain_text("notes.txt")
    screenshot(page, "pull-request")
    page.goto(f"{server.url}/jobs/{name}/{job.id}")
    page.click("#rescue-pr-form button")  # asked again: the same pull request
    expect(page).to_have_url(re.compile(f"/{repo}/discussions/1$"))
    page.click("#merge-form button")
    expect(page.locator("#discussion-status")).to_have_text("merged")
    assert "notes.txt" in api.list_repo_files(repo)
    page.goto(f"{server.url}/jobs/{name}/{job.id}")
    expect(page.locator("#rescue-merged")).to_contain_text("the rescue is merged")
    assert page.locator("#rescue-pr-form").count() == 0, "nothing is left to offer"

    for status, label, found in (("CANCELED", f"keephub.repo={repo}", True), ("COMPLETED", "", False),
                                 ("", f"keephub.repo={name}/another-run", False)):
        page.goto(f"{server.url}/jobs/{name}")
        page.select_option("select[name=status]", status)
        page.fill("input[name=label]", label)
        page.click("form.row button")
        if found:
            expect(page.locator("table.jobs")).to_contain_text(job.id[:12])
        else:
            expect(page.locator("main")).to_contain_text("No jobs match")
    page.goto(f"{server.url}/")
    expect(page.locator("main")).to_contain_text(job.id[:12])


def test_private_pages_csrf_tokens_and_attempt_limit(server: Server, browser: Browser) -> None:
    owner, owner_token = user_with_password(server)
    owner_api = HfApi(endpoint=server.url, token=owner_token)
    secret_repo = f"{owner}/secret-{uuid.uuid4().hex[:6]}"
    owner_api.create_repo(secret_repo, private=True)
    other, other_token = server.user()

    # Another user, signed in with a token, sees neither the private repo nor its name anywhere.
    page = watched_page(browser)
    sign_in(page, server, token=other_token)
    expect(page.locator("header nav")).to_contain_text(other)
    owner_api.create_discussion(secret_repo, title="a private question")
    for path in (f"/{secret_repo}", f"/{secret_repo}/tree/main", f"/{secret_repo}/blob/main/README.md",
                 f"/{secret_repo}/discussions", f"/{secret_repo}/discussions/1"):
        response = page.goto(f"{server.url}{path}")
        assert response is not None and response.status == 404
    for path in ("/", f"/{owner}"):
        page.goto(f"{server.url}{path}")
        assert secret_repo.split("/")[1] not in page.content()
    page.goto(f"{server.url}/jobs/{owner}")
    assert "secret" not in page.content()

    # The owner sees it, and manages tokens: created (shown once), listed, revoked.
    mine = watched_page(browser)
    sign_in(mine, server, owner, PASSWORD)
    mine.goto(f"{server.url}/{secret_repo}")
    expect(mine.locator("h1")).to_contain_text("private")
    # An organization's members are listed to its admins only.
    org = f"org-{uuid.uuid4().hex[:6]}"
    keephub_cli(server.data_dir, "org", "create", org, "--owner", owner)
    keephub_cli(server.data_dir, "org", "add-member", org, other, "--role", "read")
    mine.goto(f"{server.url}/{org}")
    expect(mine.locator("main")).to_contain_text("Members")
    expect(mine.locator("main")).to_contain_text(other)
    page.goto(f"{server.url}/{org}")
    assert "Members" not in page.locator("main").inner_text()

    mine.goto(f"{server.url}/settings/tokens")
    mine.fill("input[name=name]", "laptop")
    mine.select_option("select[name=role]", "read")
    mine.click("text=Create token")
    expect(mine).to_have_url(f"{server.url}/settings/tokens")  # redirected: a reload does not post the form again
    new_token = mine.locator("#new-token").inner_text().strip()
    assert HfApi(endpoint=server.url, token=new_token).whoami()["name"] == owner
    screenshot(mine, "tokens")
    mine.reload()
    expect(mine.locator("tr", has_text="laptop")).to_have_count(1)
    assert new_token not in mine.content(), "a token's secret is shown once"
    assert not [c for c in mine.context.cookies() if c["name"] == "keephub_new_token"]
    row = mine.locator("tr", has_text="laptop")
    expect(row).to_contain_text("read")
    assert "never" not in row.inner_text(), "the token was just used"
    row.locator("button", has_text="Revoke").click()
    expect(mine.locator("tr", has_text="laptop")).to_contain_text("revoked")
    with pytest.raises(HfHubHTTPError):
        HfApi(endpoint=server.url, token=new_token).whoami()

    # The session cookie without the form's CSRF token changes nothing.
    session_cookie = next(c["value"] for c in mine.context.cookies() if c["name"] == "keephub_session")
    forged = httpx.Client(base_url=server.url, cookies={"keephub_session": session_cookie})
    before = forged.get("/settings/tokens").text.count("<tr>")
    for path, data in (("/settings/tokens", {"name": "forged", "role": "write"}), ("/logout", {}),
                       ("/settings/tokens", {"name": "forged", "role": "write", "csrf_token": "guess"}),
                       (f"/{secret_repo}/discussions/1/merge", {}), (f"/jobs/{owner}/any-job/rescue-pr", {})):
        refused = forged.post(path, data=data)
        assert refused.status_code == 403 and "CSRF" in refused.text, refused.text
    assert forged.get("/settings/tokens").text.count("<tr>") == before
    mine.reload()
    expect(mine.locator("header nav")).to_contain_text(owner)  # still signed in

    # Failed sign-ins: the same time for an unknown user and a wrong password, then a limit per user.
    def failed_sign_in(username: str) -> float:
        client = httpx.Client(base_url=server.url)
        form_token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        started = time.perf_counter()
        reply = client.post("/login", data={"csrf_token": form_token, "username": username, "password": "nope"})
        elapsed = time.perf_counter() - started
        assert reply.status_code in (401, 429), reply.text
        return elapsed if reply.status_code == 401 else -1.0

    # After signing in, only a path on this server is followed.
    for target, landing in (("/settings/tokens", "/settings/tokens"), ("//evil.example/x", "/"),
                            ("/\t/evil.example", "/"), ("https://evil.example/", "/")):
        client = httpx.Client(base_url=server.url)
        form_token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        reply = client.post("/login", data={"csrf_token": form_token, "username": owner, "password": PASSWORD,
                                            "next": target})
        assert reply.status_code == 303 and reply.headers["location"] == landing, (target, reply.headers)

    unknown = statistics.median(failed_sign_in(f"ghost-{uuid.uuid4().hex[:6]}") for _ in range(3))
    wrong = statistics.median(failed_sign_in(owner) for _ in range(3))
    assert unknown > 0.5 * wrong, f"an unknown user is refused in {unknown:.3f} s, a wrong password in {wrong:.3f} s"
    assert failed_sign_in(owner) > 0 and failed_sign_in(owner) > 0
    locked_out = watched_page(browser)
    sign_in(locked_out, server, owner, PASSWORD)
    expect(locked_out.locator("[role=alert]")).to_contain_text("too many failed sign-ins")
