"""JSON shapes the huggingface_hub client parses (RepoFile, ModelInfo, GitCommitInfo, GitRefs, ...)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import html

import yaml
from dulwich.objects import Commit
from markdown_it import MarkdownIt

from keephub.hub.repos import RepoRef
from keephub.storage.gitobjects import Entry, lfs_pointer
from keephub.storage.schema import Ref
from keephub.wire.text import first_invalid_string

# Raw HTML in a commit message is shown as text, never passed through.
_MARKDOWN = MarkdownIt("commonmark", {"html": False})


def iso(moment: datetime) -> str:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return aware.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def tree_entry(entry: Entry, xet_hash: str | None = None) -> dict:
    if entry.is_dir:
        return {"type": "directory", "oid": entry.sha, "size": 0, "path": entry.path}
    item: dict = {"type": "file", "oid": entry.sha, "size": entry.file_size, "path": entry.path}
    if entry.lfs_oid is not None:
        item["lfs"] = {"oid": entry.lfs_oid, "size": entry.lfs_size,
                       "pointerSize": len(lfs_pointer(entry.lfs_oid, entry.lfs_size or 0))}
    if xet_hash is not None:
        item["xetHash"] = xet_hash
    return item


def sibling(entry: Entry, with_metadata: bool) -> dict:
    item: dict = {"rfilename": entry.path}
    if with_metadata:
        item["size"] = entry.file_size
        item["blobId"] = entry.sha
        if entry.lfs_oid is not None:
            item["lfs"] = {"sha256": entry.lfs_oid, "size": entry.lfs_size,
                           "pointerSize": len(lfs_pointer(entry.lfs_oid, entry.lfs_size or 0))}
    return item


class _CardLoader(yaml.SafeLoader):
    """YAML without aliases: `a: &x [*x]` is a cycle no JSON answer can hold, and nested aliases expand
    exponentially (a "billion laughs") once written out; model card metadata has no use for either."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases are not allowed in model card metadata")
        return super().compose_node(parent, index)


def card_data(readme: bytes | None) -> dict | None:
    """The YAML front matter of README.md, which the Hub exposes as cardData; None when there is none or it
    cannot be answered as JSON text.

    The README is stored as written; only what is derived from it must always render, or one README would
    make the repo's info answer 500 for good: dates become ISO strings, and metadata that is nested past
    the parser's depth, has non-text keys, or holds a lone surrogate (YAML "\\ud800") is left out.
    """
    if not readme:
        return None
    text = readme.decode("utf-8", "replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        card = json.loads(json.dumps(yaml.load(text[3:end], Loader=_CardLoader), default=str))
    except (yaml.YAMLError, RecursionError, TypeError, ValueError):
        return None
    if not isinstance(card, dict) or first_invalid_string(card) is not None:
        return None
    return card


def repo_info(repo: RepoRef, sha: str | None, card: dict | None, files: dict | None, base_url: str) -> dict:
    """`card`: the README's metadata (card_data); `files`: `siblings` and `usedStorage` (hub/snapshots.py)."""
    tags = [tag for tag in card["tags"] if isinstance(tag, str)] if card and isinstance(card.get("tags"), list) else []
    info: dict = {
        "_id": f"{repo.type}-{repo.id}",
        "id": repo.repo_id,
        "author": repo.namespace,
        "sha": sha,
        "lastModified": iso(repo.last_modified),
        "createdAt": iso(repo.created_at),
        "private": repo.private,
        "gated": False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags,
        "cardData": card,
        "url": f"{base_url}/{repo.url_path}",
    }
    if repo.type == "model":
        info["modelId"] = repo.repo_id
        if card:
            info["library_name"] = card.get("library_name")
            info["pipeline_tag"] = card.get("pipeline_tag")
    if repo.type == "space":
        info["sdk"] = repo.space_sdk
        info["runtime"] = {"stage": "NO_APP_FILE", "hardware": {"current": None, "requested": None}}
    if files is not None:
        info |= files
    return info


def commit_entry(sha: str, commit: Commit, formatted: bool = False) -> dict:
    """A GitCommitInfo; `formatted` (`expand[]=formatted`) adds the title and message as HTML, as the Hub's pages
    show them: the title as text, the message rendered from Markdown."""
    message = commit.message.decode("utf-8", "replace").strip()
    title, _, body = message.partition("\n")
    author = commit.author.decode("utf-8", "replace").split(" <")[0]
    entry = {
        "id": sha,
        "title": title,
        "message": body.strip(),
        "authors": [{"user": author}],
        "date": iso(datetime.fromtimestamp(commit.author_time, tz=timezone.utc)),
    }
    if formatted:
        entry["formatted"] = {"title": html.escape(title), "message": _MARKDOWN.render(body.strip())}
    return entry


def last_commit(commit: Commit) -> dict:
    """The `lastCommit` of a tree entry listed with expand=true."""
    entry = commit_entry(commit.id.decode(), commit)
    return {"id": entry["id"], "title": entry["title"], "date": entry["date"]}


def refs(all_refs: list[Ref]) -> dict:
    def item(ref: Ref, prefix: str) -> dict:
        return {"name": ref.name, "ref": f"refs/{prefix}/{ref.name}", "targetCommit": ref.commit_sha}

    # A pull request's ref is stored as a branch named `refs/pr/<num>` (see hub/discussions.py).
    pull_requests = [r for r in all_refs if r.kind == "branch" and r.name.startswith("refs/pr/")]
    return {
        "branches": [item(r, "heads") for r in all_refs if r.kind == "branch" and r not in pull_requests],
        "tags": [item(r, "tags") for r in all_refs if r.kind == "tag"],
        "converts": [],
        "pullRequests": [{"name": r.name, "ref": r.name, "targetCommit": r.commit_sha} for r in pull_requests],
    }
