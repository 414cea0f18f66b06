"""Discussions and pull requests as on the Hub, in the JSON `get_repo_discussions` and `get_discussion_details`
parse (huggingface_hub's community.py).

A pull request's commits live on `refs/pr/<num>`, stored as a branch-kind ref of that name (a branch cannot be
named `refs/...`, see naming.check_ref_name), so every reader of revisions (resolve, tree, snapshot_download)
and the commit path itself serve it with no special case. Merging moves the target branch with the same locked
compare-and-swap as a commit: a fast-forward when the branch has not moved since the PR started from it, else a
merge commit when the two sides changed different files, else 409 naming the files both changed.

Who may do what, as on the Hub: anyone who reads the repo and holds a write token opens discussions and pull
requests and comments, and commits to the pull requests they opened (with the LFS and Xet uploads those need);
the author or a writer of the repo renames, closes and reopens; only writers merge.
"""

from __future__ import annotations

import difflib
import json
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from html import escape

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from keephub.accounts import Actor, allowed, authorize, require_actor
from keephub.config import Settings
from keephub.hub import commits, naming, repos, webhooks
from keephub.hub.repos import RepoRef
from keephub.storage import gitobjects
from keephub.storage.db import Database
from keephub.storage.schema import Discussion, DiscussionEvent, Ref, Repo, RepoCommit
from keephub.wire import BadRequest, Conflict, Forbidden, PreconditionFailed, TooLarge
from keephub.wire.errors import NotFound

PR_REF_PREFIX = "refs/pr/"
MAX_TITLE_CHARS = 200
MAX_COMMENT_CHARS = 65_536
PAGE_SIZE = 50
MAX_DIFF_FILE_BYTES = 1024 * 1024
LIST_TYPES = ("all", "discussion", "pull_request")
LIST_STATUSES = ("all", "open", "closed", "merged", "draft")


def pr_ref(num: int) -> str:
    return f"{PR_REF_PREFIX}{num}"


def pr_number(branch: str) -> int | None:
    """The PR number of a branch-kind ref `refs/pr/<num>`, else None."""
    rest = branch.removeprefix(PR_REF_PREFIX)
    return int(rest) if rest != branch and rest.isdigit() else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def check_title(title: object) -> str:
    if not isinstance(title, str) or not title.strip():
        raise BadRequest("'title' is missing: give the discussion a title of 1 to 200 characters")
    title = title.strip()
    if len(title) > MAX_TITLE_CHARS:
        raise BadRequest(f"'title' is {len(title)} characters long; shorten it to at most {MAX_TITLE_CHARS}")
    return naming.check_text(title, "title")


def check_comment(text: object, field: str = "comment") -> str:
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(f"'{field}' is missing or empty: send the comment's markdown text")
    if len(text) > MAX_COMMENT_CHARS:
        raise TooLarge(f"the {field} is {len(text)} characters long, over the limit of {MAX_COMMENT_CHARS}; "
                       "split it over several comments or attach a file to the repo")
    return naming.check_text(text, field)


# -- wire shapes -------------------------------------------------------------------------------------------
def discussion_url(base_url: str, repo: RepoRef, num: int) -> str:
    return f"{base_url}/{repo.url_path}/discussions/{num}"


def event_wire(event: DiscussionEvent) -> dict:
    return {"id": event.id, "type": event.kind, "createdAt": iso(event.created_at),
            "author": {"name": event.author, "type": "user"}, "data": json.loads(event.data_json)}


def summary_wire(discussion: Discussion, repo: RepoRef, comments: int = 0) -> dict:
    return {"num": discussion.num, "title": discussion.title, "status": discussion.status,
            "isPullRequest": discussion.is_pull_request, "createdAt": iso(discussion.created_at),
            "author": {"name": discussion.author, "type": "user"}, "repo": {"name": repo.repo_id, "type": repo.type},
            "numComments": comments, "pinned": False}


def _payload_discussion(base_url: str, repo: RepoRef, discussion: Discussion) -> dict:
    item = {"id": str(discussion.id), "num": discussion.num, "title": discussion.title, "status": discussion.status,
            "isPullRequest": discussion.is_pull_request, "author": {"id": discussion.author},
            "url": {"web": discussion_url(base_url, repo, discussion.num),
                    "api": f"{base_url}/api/{repo.type}s/{repo.repo_id}/discussions/{discussion.num}"}}
    if discussion.is_pull_request:
        item["changes"] = {"base": f"refs/heads/{discussion.target_branch}",
                           "mergeCommitId": discussion.merge_commit_sha}
    return item


# -- the service ---------------------------------------------------------------------------------------------
class Discussions:
    """Each method is one whole operation in one transaction, for the HTTP handlers to call."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    # reading
    def list(self, actor: Actor | None, repo_type: str, namespace: str, name: str, kind: str, status: str,
             author: str | None, page: int) -> dict:
        if kind not in LIST_TYPES:
            raise BadRequest(f"'type' {kind!r} is not one of {', '.join(LIST_TYPES)}")
        if status not in LIST_STATUSES:
            raise BadRequest(f"'status' {status!r} is not one of {', '.join(LIST_STATUSES)}")
        with self.db.read() as session:
            repo = repos.find_repo(session, repo_type, namespace, name, actor)
            query = select(Discussion).where(Discussion.repo_id == repo.id)
            if kind != "all":
                query = query.where(Discussion.is_pull_request.is_(kind == "pull_request"))
            if status != "all":
                query = query.where(Discussion.status == status)
            if author:
                query = query.where(Discussion.author == author)
            total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            found = session.execute(query.order_by(Discussion.num.desc()).offset(page * PAGE_SIZE)
                                    .limit(PAGE_SIZE)).scalars().all()
            counts = dict(session.execute(
                select(DiscussionEvent.discussion_id, func.count())
                .where(DiscussionEvent.discussion_id.in_([d.id for d in found]), DiscussionEvent.kind == "comment")
                .group_by(DiscussionEvent.discussion_id)).all())
            return {"discussions": [summary_wire(d, repo, counts.get(d.id, 0)) for d in found], "count": total,
                    "start": page * PAGE_SIZE, "numClosedDiscussions": 0}

    def details(self, actor: Actor | None, repo_type: str, namespace: str, name: str, num: int,
                with_diff: bool) -> dict:
        with self.db.read() as session:
            repo = repos.find_repo(session, repo_type, namespace, name, actor)
            discussion = _find(session, repo, num)
            events = session.execute(select(DiscussionEvent).where(DiscussionEvent.discussion_id == discussion.id)
                                     .order_by(DiscussionEvent.created_at, DiscussionEvent.id)).scalars().all()
            result = summary_wire(discussion, repo, sum(1 for e in events if e.kind == "comment"))
            result["events"] = [event_wire(e) for e in events]
            if discussion.is_pull_request:
                result["changes"] = {"base": f"refs/heads/{discussion.target_branch}"}
                if discussion.merge_commit_sha:
                    result["changes"]["mergeCommitId"] = discussion.merge_commit_sha
                plan = _plan_merge(session, repo, discussion) if discussion.status in ("open", "draft") else None
                result["filesWithConflicts"] = list(plan.conflicts) if plan else []
                if with_diff:
                    result["diff"] = _diff(session, repo, discussion)
            return result

    # writing
    def create(self, actor: Actor | None, repo_type: str, namespace: str, name: str, body: dict) -> dict:
        """`create_discussion` / `create_pull_request`; a pull request starts as a draft at the head of main,
        for commits to be pushed to its `refs/pr/<num>`."""
        title = check_title(body.get("title"))
        description = body.get("description")
        if description is not None and not isinstance(description, str):
            raise BadRequest("'description' must be the markdown text of the first comment")
        description = check_comment(description, "description") if description and description.strip() else None
        is_pr = body.get("pullRequest", False)
        if not isinstance(is_pr, bool):
            raise BadRequest("'pullRequest' must be true or false")
        with self.db.write() as session:
            repo = _find_for_discussing(session, repo_type, namespace, name, actor)
            assert actor is not None
            if is_pr:
                start = repos.branch_head(session, repo, repos.DEFAULT_BRANCH)
                discussion = self._open(session, repo, actor, title, description, "draft", repos.DEFAULT_BRANCH)
                session.add(Ref(repo_id=repo.id, kind="branch", name=pr_ref(discussion.num), commit_sha=start))
            else:
                discussion = self._open(session, repo, actor, title, description, "open", None)
            self._notify(session, repo, "discussion", "create", discussion)
            return {"num": discussion.num, "url": discussion_url(self.settings.base_url, repo, discussion.num),
                    "pullRequest": is_pr}

    def commit_as_pr(self, actor: Actor | None, repo_type: str, namespace: str, name: str, branch: str,
                     body: bytes | Iterable[bytes]) -> dict:
        """`create_commit(create_pr=True)`: a new pull request whose one commit applies the body to `branch`'s
        head (or to the body's parentCommit), answered as the commit endpoint answers, with pullRequestUrl."""
        request = commits.parse_ndjson(body, self.settings.max_regular_file_bytes)
        with self.db.write() as session:
            repo = _find_for_discussing(session, repo_type, namespace, name, actor)
            assert actor is not None
            if pr_number(branch) is not None:
                raise BadRequest(f"create_pr opens a new pull request against a branch, not against {branch!r}; "
                                 "to add a commit to that pull request, commit to it without create_pr")
            head = repos.branch_head(session, repo, branch)
            start = repos.resolve_revision(session, repo, request.parent_commit) if request.parent_commit else head
            title = request.summary.strip()[:MAX_TITLE_CHARS]
            discussion = self._open(session, repo, actor, title, request.description or None, "open", branch)
            ref = pr_ref(discussion.num)
            session.add(Ref(repo_id=repo.id, kind="branch", name=ref, commit_sha=start))
            session.flush()
            result = commits.apply_commit(session, repo, ref, replace(request, parent_commit=None), actor)
            _add_event(session, discussion, "commit", actor.name, {"subject": request.summary, "oid": result.sha})
            self._notify(session, repo, "discussion", "create", discussion)
        return {"commitUrl": f"{self.settings.base_url}/{repo.url_path}/commit/{result.sha}",
                "commitOid": result.sha, "commitMessage": request.summary,
                "pullRequestUrl": discussion_url(self.settings.base_url, repo, discussion.num)}

    def offer_rescue(self, actor: Actor | None, job: dict) -> dict:
        """A pull request from a job's rescue branch `rescue/<job-id>` into main, so that restoring what the rescue
        saved is one merge; asked again, the same open pull request. `job` is the job's record as the Jobs API
        answers it (the caller may read it), whose durability verdict names the branch."""
        durability = job.get("durability") or {}
        verdict = durability.get("verdict") or {}
        if verdict.get("status") != "rescued" or not durability.get("targetRepo"):
            raise Conflict(f"job {job.get('id')} has no rescue to offer (its durability verdict is "
                           f"{verdict.get('status', 'absent')!r}): only a job whose results were rescued to a "
                           "rescue/<job-id> branch has one")
        namespace, name = naming.split_repo_id(durability["targetRepo"])
        branch = str(verdict["branch"])
        title = f"Restore the results rescued from job {job.get('id')}"
        with self.db.write() as session:
            repo = _find_for_discussing(session, "model", namespace, name, actor)
            assert actor is not None
            head = repos.branch_head(session, repo, branch)
            offered = session.execute(select(Discussion).where(
                Discussion.repo_id == repo.id, Discussion.title == title, Discussion.status.in_(("open", "draft"))
            )).scalars().first()
            if offered is None:
                description = (f"{verdict.get('message', '')}\n\nMerging brings `{branch}` into "
                               f"{repos.DEFAULT_BRANCH}.")
                offered = self._open(session, repo, actor, title, description, "open", repos.DEFAULT_BRANCH)
                session.add(Ref(repo_id=repo.id, kind="branch", name=pr_ref(offered.num), commit_sha=head))
                self._notify(session, repo, "discussion", "create", offered)
            return {"num": offered.num, "url": discussion_url(self.settings.base_url, repo, offered.num),
                    "ref": pr_ref(offered.num), "repo": repo.repo_id, "branch": branch}

    def comment(self, actor: Actor | None, repo_type: str, namespace: str, name: str, num: int, body: dict) -> dict:
        text = check_comment(body.get("comment"))
        with self.db.write() as session:
            repo = _find_for_discussing(session, repo_type, namespace, name, actor)
            assert actor is not None
            discussion = _find(session, repo, num)
            event = _add_comment(session, discussion, actor.name, text)
            self._notify(session, repo, "discussion.comment", "create", discussion, event)
            return {"newMessage": event_wire(event)}

    def edit_comment(self, actor: Actor | None, repo_type: str, namespace: str, name: str, num: int,
                     comment_id: str, body: dict) -> dict:
        text = check_comment(body.get("content"), "content")
        with self.db.write() as session:
            repo = _find_for_discussing(session, repo_type, namespace, name, actor)
            assert actor is not None
            discussion = _find(session, repo, num)
            event = _find_comment(session, discussion, comment_id)
            if event.author != actor.name:
                raise Forbidden(f"403 Forbidden: only {event.author}, who wrote comment {comment_id}, can edit it")
            data = json.loads(event.data_json)
            if data["hidden"]:
                raise Conflict(f"comment {comment_id} is hidden; a hidden comment cannot be edited")
            now = iso(utcnow())
            data["history"].insert(0, {"raw": text, "updatedAt": now, "author": {"name": actor.name}})
            data["latest"] = {"raw": text, "html": _html(text), "updatedAt": now, "author": {"name": actor.name}}
            data["edited"], data["numEdits"] = True, data.get("numEdits", 0) + 1
            event.data_json = json.dumps(data)
            self._notify(session, repo, "discussion.comment", "update", discussion, event)
            return {"updatedComment": event_wire(event)}

    def hide_comment(self, actor: Actor | None, repo_type: str, namespace: str, name: str, num: int,
                     comment_id: str) -> dict:
        """Hiding erases the text for good, as on the Hub; the comment's author or a writer of the repo may."""
        with self.db.write() as session:
            repo = _find_for_discussing(session, repo_type, namespace, name, actor)
            assert actor is not None
            discussion = _find(session, repo, num)
            event = _find_comment(session, discussion, comment_id)
            if event.author != actor.name and not allowed(actor, "repo.write", repo.target):
                raise Forbidden(f"403 Forbidden: only {event.author}, who wrote comment {comment_id}, or a writer of "
                                f"{repo.repo_id} can hide it")
            data = json.loads(event.data_json)
            data["hidden"] = True
            data["latest"] = data["latest"] | {"raw": "", "html": ""}
            data["history"] = []
            event.data_json = json.dumps(data)
            self._notify(session, repo, "discussion.comment", "update", discussion, event)
            return {"updatedComment": event_wire(event)}

    def rename(self, actor: Actor | None, repo_type: str, namespace: str, name: str, num: int, body: dict) -> dict:
        title = check_title(body.get("title"))
        with self.db.write() as session:
            repo, discussion = self._for_author_or_writer(session, repo_type, namespace, name, num, actor, "rename")
            assert actor is not None
            event = _add_event(session, discussion, "title-change", actor.name, {"from": discussion.title, "to": title})
            discussion.title = title
            self._notify(session, repo, "discussion", "update", discussion)
            return {"newTitle": event_wire(event)}

    def change_status(self, actor: Actor | None, repo_type: str, namespace: str, name: str, num: int,
                      body: dict) -> dict:
        status = body.get("status")
        if status not in ("open", "closed"):
            raise BadRequest(f"'status' {status!r} is not one of open, closed (a pull request is merged with "
                             "merge_pull_request)")
        comment = body.get("comment")
        comment = check_comment(comment) if comment else None
        with self.db.write() as session:
            repo, discussion = self._for_author_or_writer(session, repo_type, namespace, name, num, actor,
                                                          "close or reopen")
            assert actor is not None
            if discussion.status == "merged":
                raise Conflict(f"#{num} is merged; a merged pull request cannot be closed or reopened")
            if discussion.status == status:
                raise Conflict(f"#{num} is {status} already")
            if comment:
                _add_comment(session, discussion, actor.name, comment)
            discussion.status = status
            event = _add_event(session, discussion, "status-change", actor.name, {"status": status})
            self._notify(session, repo, "discussion", "update", discussion)
            return {"newStatus": event_wire(event)}

    def merge(self, actor: Actor | None, repo_type: str, namespace: str, name: str, num: int, body: dict) -> dict:
        comment = body.get("comment")
        comment = check_comment(comment) if comment else None
        with self.db.write() as session:
            repo = repos.find_repo_for_write(session, repo_type, namespace, name, actor)
            assert actor is not None
            discussion = _find(session, repo, num, lock=True)
            if not discussion.is_pull_request:
                raise BadRequest(f"#{num} of {repo.repo_id} is a discussion, not a pull request; nothing to merge")
            if discussion.status not in ("open", "draft"):
                raise Conflict(f"pull request #{num} is {discussion.status}; only an open pull request can be merged"
                               + (" (reopen it first with change_discussion_status)" if discussion.status == "closed"
                                  else ""))
            target = str(discussion.target_branch)
            base = repos.branch_head(session, repo, target, lock=True)
            plan = _plan_merge(session, repo, discussion)
            if plan.head == base or plan.ancestor == plan.head:
                raise BadRequest(f"{pr_ref(num)} holds no commit that {target!r} lacks; commit the changes to "
                                 f"{pr_ref(num)} first")
            if plan.conflicts:
                raise Conflict(f"pull request #{num} cannot be merged into {target!r}: {target} changed since the "
                               f"pull request started, in the same files ({', '.join(plan.conflicts[:20])}); commit "
                               f"the resolution to {pr_ref(num)} and merge again")
            merged = plan.head if plan.fast_forward else _merge_commit(session, repo, plan, actor, discussion)
            moved = session.execute(
                update(Ref).where(Ref.repo_id == repo.id, Ref.kind == "branch", Ref.name == target,
                                  Ref.commit_sha == base).values(commit_sha=merged))
            if moved.rowcount != 1:
                raise PreconditionFailed(f"branch {target!r} moved during the merge; merge again")
            repos.touch(session, repo)
            if comment:
                _add_comment(session, discussion, actor.name, comment)
            discussion.status, discussion.merge_commit_sha = "merged", merged
            discussion.merge_base_sha = plan.ancestor
            _add_event(session, discussion, "status-change", actor.name, {"status": "merged"})
            self._notify(session, repo, "discussion", "update", discussion)
            webhooks.record_event(session, self.settings.base_url, repo, "repo.content", "update", merged,
                                  updatedRefs=[{"ref": f"refs/heads/{target}", "oldSha": base, "newSha": merged}])
            return {"mergeCommitId": merged, "fastForward": plan.fast_forward}

    # helpers
    def _open(self, session: Session, repo: RepoRef, actor: Actor, title: str, description: str | None, status: str,
              target_branch: str | None) -> Discussion:
        """A new discussion numbered after the repo's last one (the repo row is locked, so two never share one)."""
        session.execute(select(Repo.id).where(Repo.id == repo.id).with_for_update())
        last = session.execute(select(func.max(Discussion.num)).where(Discussion.repo_id == repo.id)).scalar()
        discussion = Discussion(repo_id=repo.id, num=(last or 0) + 1, is_pull_request=target_branch is not None,
                                title=check_title(title), status=status, author=actor.name,
                                target_branch=target_branch, created_at=utcnow())
        session.add(discussion)
        session.flush()
        if description:
            _add_comment(session, discussion, actor.name, check_comment(description, "description"))
        return discussion

    def _for_author_or_writer(self, session: Session, repo_type: str, namespace: str, name: str, num: int,
                              actor: Actor | None, doing: str) -> tuple[RepoRef, Discussion]:
        repo = _find_for_discussing(session, repo_type, namespace, name, actor)
        assert actor is not None
        discussion = _find(session, repo, num, lock=True)
        if discussion.author != actor.name and not allowed(actor, "repo.write", repo.target):
            raise Forbidden(f"403 Forbidden: only {discussion.author}, who opened #{num}, or a writer of "
                            f"{repo.repo_id} can {doing} it")
        return repo, discussion

    def _notify(self, session: Session, repo: RepoRef, scope: str, action: str, discussion: Discussion,
                comment: DiscussionEvent | None = None) -> None:
        base = self.settings.base_url
        extra: dict = {"discussion": _payload_discussion(base, repo, discussion)}
        if comment is not None:
            data = json.loads(comment.data_json)
            extra["comment"] = {"id": comment.id, "author": {"id": comment.author}, "hidden": data["hidden"],
                                "content": data["latest"]["raw"],
                                "url": {"web": f"{discussion_url(base, repo, discussion.num)}#{comment.id}"}}
        webhooks.record_event(session, base, repo, scope, action, **extra)


def record_push(session: Session, settings: Settings, repo: RepoRef, actor: Actor, branch: str, commit_sha: str,
                summary: str) -> None:
    """What a commit to `branch` (made in this transaction) sets off: its event in the pull request when the
    branch is `refs/pr/<num>`, and the webhooks' `repo.content` event."""
    parents = gitobjects.load_commit(session, commit_sha).parents
    old = parents[0].decode() if parents else None
    num = pr_number(branch)
    if num is not None:
        discussion = session.execute(select(Discussion).where(Discussion.repo_id == repo.id, Discussion.num == num)
                                     ).scalar_one_or_none()
        if discussion is not None:
            _add_event(session, discussion, "commit", actor.name, {"subject": summary, "oid": commit_sha})
    ref = branch if num is not None else f"refs/heads/{branch}"
    webhooks.record_event(session, settings.base_url, repo, "repo.content", "update", commit_sha,
                          updatedRefs=[{"ref": ref, "oldSha": old, "newSha": commit_sha}])


def find_repo_for_contribution(session: Session, repo_type: str, namespace: str, name: str, actor: Actor | None,
                               branch: str | None) -> RepoRef:
    """The repo if the caller may write to `branch`: a writer anywhere; anyone who may discuss the repo to the
    open pull request they authored (`refs/pr/<num>`), or to a new one (`branch` None: uploads and commits made
    with create_pr). A non-writer's bytes thus reach the repo's files only through their own pull request."""
    require_actor(actor, f"write to {namespace}/{name}")
    repo = repos.find_repo(session, repo_type, namespace, name, actor)
    if allowed(actor, "repo.write", repo.target):
        return repo
    num = None if branch is None else pr_number(branch)
    if branch is None or num is not None:
        authorize(actor, "repo.discuss", repo.target)
    if branch is None:
        return repo
    assert actor is not None
    if num is not None:
        authored = session.execute(select(Discussion.num).where(
            Discussion.repo_id == repo.id, Discussion.num == num, Discussion.author == actor.name,
            Discussion.is_pull_request.is_(True), Discussion.status.in_(("open", "draft")))).scalar_one_or_none()
        if authored is not None:
            return repo
        raise Forbidden(f"403 Forbidden: {actor.name} may commit to {branch} of {repo.repo_id} only while it is an "
                        "open pull request they opened; open your own with create_pr=True")
    authorize(actor, "repo.write", repo.target)
    return repo


def _find_for_discussing(session: Session, repo_type: str, namespace: str, name: str,
                         actor: Actor | None) -> RepoRef:
    require_actor(actor, f"take part in discussions of {namespace}/{name}")
    repo = repos.find_repo(session, repo_type, namespace, name, actor)
    authorize(actor, "repo.discuss", repo.target)
    return repo


def _find(session: Session, repo: RepoRef, num: int, lock: bool = False) -> Discussion:
    query = select(Discussion).where(Discussion.repo_id == repo.id, Discussion.num == num)
    found = session.execute(query.with_for_update() if lock else query).scalar_one_or_none()
    if found is None:
        raise NotFound(f"{repo.repo_id} has no discussion or pull request #{num}; list them with "
                       "HfApi().get_repo_discussions(...)")
    return found


def _find_comment(session: Session, discussion: Discussion, comment_id: str) -> DiscussionEvent:
    event = session.get(DiscussionEvent, comment_id.lower()) if len(comment_id) <= 24 else None
    if event is None or event.discussion_id != discussion.id or event.kind != "comment":
        raise NotFound(f"#{discussion.num} has no comment {comment_id!r}; comment ids are the `id` of its events in "
                       "get_discussion_details")
    return event


def event_id() -> str:
    """24 hex digits like the Hub's ids, starting with the time in nanoseconds so that ids sort as events happened
    (two events of one transaction can share a timestamp)."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}"


def _add_event(session: Session, discussion: Discussion, kind: str, author: str, data: dict) -> DiscussionEvent:
    event = DiscussionEvent(id=event_id(), discussion_id=discussion.id, kind=kind, author=author,
                            data_json=json.dumps(data), created_at=utcnow())
    session.add(event)
    session.flush()
    return event


def _add_comment(session: Session, discussion: Discussion, author: str, text: str) -> DiscussionEvent:
    now = iso(utcnow())
    latest = {"raw": text, "html": _html(text), "updatedAt": now, "author": {"name": author}}
    return _add_event(session, discussion, "comment", author, {
        "edited": False, "hidden": False, "numEdits": 0, "latest": latest,
        "history": [{"raw": text, "updatedAt": now, "author": {"name": author}}]})


def _html(text: str) -> str:
    """Comments are shown as text, never as markup someone else wrote."""
    return "<p>" + escape(text).replace("\n", "<br>") + "</p>"


# -- merging -------------------------------------------------------------------------------------------------
class MergePlan:
    """What merging a pull request does: its head, the common ancestor with the target, the files each side
    changed since then, and those both changed differently."""

    def __init__(self, base: str, head: str, ancestor: str | None, base_changes: dict[str, str | None],
                 pr_changes: dict[str, str | None]) -> None:
        self.base, self.head, self.ancestor = base, head, ancestor
        self.fast_forward = ancestor == base
        self.pr_changes = pr_changes
        self.conflicts = sorted(path for path, sha in pr_changes.items()
                                if path in base_changes and base_changes[path] != sha)


# Merge plans by (target branch head, pull request head): both are commits, which never change, so a pull
# request's page costs its two tree diffs once per push, not on every view.
_merge_plans: gitobjects.ShaKeyedCache[tuple[str, str], MergePlan] = gitobjects.ShaKeyedCache(256)


def _plan_merge(session: Session, repo: RepoRef, discussion: Discussion) -> MergePlan:
    base = repos.branch_head(session, repo, str(discussion.target_branch))
    head = repos.branch_head(session, repo, pr_ref(discussion.num))

    def compute() -> MergePlan:
        ancestor = _merge_base(session, base, head)
        return MergePlan(base, head, ancestor, _changes(session, ancestor, base), _changes(session, ancestor, head))

    return _merge_plans.get_or_compute((base, head), compute)


def _merge_base(session: Session, base: str, head: str) -> str | None:
    """The nearest commit both `base` and `head` reach: a breadth-first walk back from the two at once, so the
    cost is the distance to where the pull request left its branch, not the length of the repo's history."""
    from_base, from_head = 1, 2
    reached = {base: from_base}
    reached[head] = reached.get(head, 0) | from_head
    queue = deque([base, head])
    while queue:
        sha = queue.popleft()
        if reached[sha] == from_base | from_head:
            return sha
        for parent in (p.decode() for p in gitobjects.load_commit(session, sha).parents):
            before = reached.get(parent, 0)
            if before | reached[sha] != before:
                reached[parent] = before | reached[sha]
                queue.append(parent)
    return None


def _tree(session: Session, commit_sha: str | None) -> str | None:
    return gitobjects.load_commit(session, commit_sha).tree.decode() if commit_sha else None


def _changes(session: Session, before: str | None, after: str) -> dict[str, str | None]:
    """path -> its blob at `after` (None: deleted) of each file changed between two commits."""
    return {path: new for path, (_, new) in gitobjects.changed_files(session, _tree(session, before),
                                                                     _tree(session, after)).items()}


def _merge_commit(session: Session, repo: RepoRef, plan: MergePlan, actor: Actor, discussion: Discussion) -> str:
    writer = gitobjects.ObjectWriter()
    base_tree = gitobjects.load_commit(session, plan.base).tree.decode()
    deletions = {p: s for p, s in plan.pr_changes.items() if s is None}
    additions = {p: s for p, s in plan.pr_changes.items() if s is not None}
    tree = gitobjects.apply_changes(session, writer, base_tree, deletions | additions)
    commit = repos.make_commit(tree, [plan.base, plan.head], actor.name,
                               f"Merge {pr_ref(discussion.num)}: {discussion.title}", "")
    sha = writer.add(commit)
    writer.flush(session)
    session.add(RepoCommit(repo_id=repo.id, sha=sha))
    return sha


def _diff(session: Session, repo: RepoRef, discussion: Discussion) -> str:
    """A unified diff of what the pull request changes since it left its target branch (for a merged one, what
    it changed when merged; none for one merged before keephub kept where it left)."""
    if discussion.status == "merged" and discussion.merge_base_sha is None:
        return ""
    head = repos.branch_head(session, repo, pr_ref(discussion.num))
    if discussion.status == "merged":
        ancestor: str | None = discussion.merge_base_sha
    else:
        ancestor = _merge_base(session, repos.branch_head(session, repo, str(discussion.target_branch)), head)
    parts = []
    for path, (before, after) in sorted(gitobjects.changed_files(session, _tree(session, ancestor),
                                                                 _tree(session, head)).items()):
        old, new = _text(session, before), _text(session, after)
        parts.append(f"diff --git a/{path} b/{path}\n")
        if old is None or new is None:
            parts.append(f"Binary files a/{path} and b/{path} differ\n")
            continue
        parts.extend(difflib.unified_diff(old, new, f"a/{path}" if before else "/dev/null",
                                          f"b/{path}" if after else "/dev/null"))
    return "".join(parts)


def _text(session: Session, blob_sha: str | None) -> list[str] | None:
    if blob_sha is None:
        return []
    data = gitobjects.read_blob(session, blob_sha)
    if len(data) > MAX_DIFF_FILE_BYTES or b"\x00" in data:
        return None
    try:
        return data.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return None
