"""JSON shapes the huggingface_hub client parses (RepoFile, ModelInfo, GitCommitInfo, GitRefs, ...)."""

from __future__ import annotations

from datetime import datetime, timezone

import yaml
from dulwich.objects import Commit

from keephub.hub.repos import RepoRef
from keephub.storage.gitobjects import Entry, lfs_pointer
from keephub.storage.schema import Ref


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


def card_data(readme: bytes | None) -> dict | None:
    """The YAML front matter of README.md, which the Hub exposes as cardData."""
    if not readme:
        return None
    text = readme.decode("utf-8", "replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


def repo_info(repo: RepoRef, sha: str | None, files: list[Entry] | None, readme: bytes | None,
              with_file_metadata: bool, base_url: str) -> dict:
    card = card_data(readme)
    tags = list(card.get("tags") or []) if card and isinstance(card.get("tags"), list) else []
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
        info["siblings"] = [sibling(e, with_file_metadata) for e in files if not e.is_dir]
        info["usedStorage"] = sum(e.file_size for e in files if not e.is_dir)
    return info


def commit_entry(sha: str, commit: Commit) -> dict:
    message = commit.message.decode("utf-8", "replace").strip()
    title, _, body = message.partition("\n")
    author = commit.author.decode("utf-8", "replace").split(" <")[0]
    return {
        "id": sha,
        "title": title,
        "message": body.strip(),
        "authors": [{"user": author}],
        "date": iso(datetime.fromtimestamp(commit.author_time, tz=timezone.utc)),
    }


def last_commit(commit: Commit) -> dict:
    """The `lastCommit` of a tree entry listed with expand=true."""
    entry = commit_entry(commit.id.decode(), commit)
    return {"id": entry["id"], "title": entry["title"], "date": entry["date"]}


def refs(all_refs: list[Ref]) -> dict:
    def item(ref: Ref, prefix: str) -> dict:
        return {"name": ref.name, "ref": f"refs/{prefix}/{ref.name}", "targetCommit": ref.commit_sha}

    return {
        "branches": [item(r, "heads") for r in all_refs if r.kind == "branch"],
        "tags": [item(r, "tags") for r in all_refs if r.kind == "tag"],
        "converts": [],
        "pullRequests": [],
    }
