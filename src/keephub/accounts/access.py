"""Who may do what: `authorize` is the one permission check behind every endpoint.

A caller is a user acting through one token. What the token may do is the user's rights narrowed by the
token: a read token writes nothing; a scoped token (fine-grained, or a job's token) writes only the repos and
namespaces on its list and reads what its user reads; a job's token never manages repos or jobs. Errors are
the Hub's: a private repo the caller may not read is 404, a missing token 401, a refusal 403 naming why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from keephub.accounts.scopes import Scope
from keephub.accounts.service import Actor
from keephub.wire import Forbidden, HubError, RepoNotFound, Unauthorized
from keephub.wire.errors import NotFound

Action = Literal[
    "repo.read",  # see a repo and download its files
    "repo.write",  # commit, branches, tags, uploads
    "repo.discuss",  # open discussions and pull requests, comment (as on the Hub: read access and a write token)
    "repo.create",
    "repo.manage",  # delete, move, settings (visibility)
    "jobs.read",  # see jobs and scheduled jobs of a namespace
    "jobs.create",
    "scheduled_jobs.create",
    "jobs.manage",  # cancel jobs; suspend, resume, reschedule, trigger or delete scheduled jobs
]

_JOB_TOKEN_REFUSALS: dict[str, str] = {
    "repo.manage": "job tokens cannot delete, move or change the settings of repos",
    "jobs.create": "job tokens cannot create jobs",
    "scheduled_jobs.create": "job tokens cannot create scheduled jobs",
    "jobs.manage": "job tokens cannot cancel or change jobs",
}


@dataclass(frozen=True)
class RepoTarget:
    """A repo, or a bucket (`type` "bucket"), as authorization sees it; `private` is False for one that does not
    exist yet. Buckets follow the repo rules: the same roles, scopes and job-token limits."""

    type: str
    namespace: str
    name: str
    private: bool = False

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def scope(self) -> Scope:
        return Scope(self.type, self.repo_id)


@dataclass(frozen=True)
class NamespaceTarget:
    namespace: str


Target = RepoTarget | NamespaceTarget


def require_actor(actor: Actor | None, doing: str) -> Actor:
    if actor is None:
        raise _unauthenticated(doing)
    return actor


def authorize(actor: Actor | None, action: Action, target: Target) -> None:
    """Raise the 401/403/404 the Hub would answer when `actor` may not do `action` on `target`."""
    refusal = refusal_of(actor, action, target)
    if refusal is not None:
        raise refusal


def allowed(actor: Actor | None, action: Action, target: Target) -> bool:
    return refusal_of(actor, action, target) is None


def refusal_of(actor: Actor | None, action: Action, target: Target) -> HubError | None:
    """The error `authorize` would raise, or None when the action is allowed."""
    if isinstance(target, RepoTarget):
        return _repo_refusal(actor, action, target)
    return _namespace_refusal(actor, action, target.namespace)


def _repo_refusal(actor: Actor | None, action: Action, repo: RepoTarget) -> HubError | None:
    if action != "repo.create" and repo.private and (actor is None or actor.namespace_role(repo.namespace) is None):
        hint = "" if actor else " If it is private, pass a token with read access."
        what = "Bucket" if repo.type == "bucket" else f"{repo.type.capitalize()} repository"
        return RepoNotFound(f"{what} {repo.repo_id} not found.{hint}")
    if action == "repo.read":
        return None
    if action == "repo.discuss" and actor is not None and not actor.is_job_token:
        if actor.token_role != "write":
            return Forbidden(f"403 Forbidden: the token '{actor.token_name}' is read-only; discussions and pull "
                             f"requests need a write token (keephub token create {actor.name} --role write).")
        return None
    verb = {"repo.create": "create", "repo.manage": "manage"}.get(action, "write to")
    if actor is None:
        return _unauthenticated(f"{verb} {repo.repo_id}")
    if action == "repo.manage" and actor.is_job_token:
        return Forbidden(f"403 Forbidden: {_JOB_TOKEN_REFUSALS[action]}; {repo.repo_id} can be changed with your "
                         "own token, outside the job.")
    reason = _write_denial(actor, repo.namespace, repo.scope)
    if reason is not None:
        return Forbidden(f"403 Forbidden: {reason}.")
    if action == "repo.manage" and actor.namespace_role(repo.namespace) != "admin":
        return Forbidden(f"403 Forbidden: only admins of '{repo.namespace}' can delete, move or change the "
                         f"settings of {repo.repo_id}.")
    return None


def _namespace_refusal(actor: Actor | None, action: Action, namespace: str) -> HubError | None:
    if action == "jobs.read":
        if actor is None:
            return _unauthenticated(f"see jobs in {namespace}")
        if actor.namespace_role(namespace) is None:
            return NotFound(f"no jobs namespace {namespace!r} visible to {actor.name}")
        return None
    if actor is None:
        return _unauthenticated(f"run jobs in {namespace}")
    if actor.is_job_token and action in _JOB_TOKEN_REFUSALS:
        return Forbidden(f"403 Forbidden: {_JOB_TOKEN_REFUSALS[action]}: a job's token ends with its job, and "
                         "work it started would outlive it; submit jobs from outside the job with your own token.")
    reason = _write_denial(actor, namespace, Scope("namespace", namespace))
    return None if reason is None else Forbidden(f"403 Forbidden: {reason}.")


def _unauthenticated(doing: str) -> Unauthorized:
    return Unauthorized(f"you must be authenticated to {doing}: pass a token (HF_TOKEN, or `hf auth login`) "
                        "created with `keephub token create USER --role write`")


def _write_denial(actor: Actor, namespace: str, needed: Scope) -> str | None:
    """Why this caller may not write `needed` in `namespace`, phrased with the fix; None when it may."""
    if actor.token_role != "write":
        if actor.is_job_token:
            return (f"this job's token is read-only: job {actor.job_id} names no target repo that the token it was "
                    "submitted with may write; name one in a namespace you can write with a keephub.repo label or "
                    "the script's hub_model_id")
        return (f"the token '{actor.token_name}' is read-only; create a write token "
                f"(keephub token create {actor.name} --role write) and use it")
    role = actor.namespace_role(namespace)
    if role is None:
        return (f"user '{actor.name}' has no write access to namespace '{namespace}': push to your own namespace "
                f"'{actor.name}/...' or ask an admin of '{namespace}' to add you with the write role")
    if role not in ("write", "admin"):
        return (f"user '{actor.name}' has only the '{role}' role in organization '{namespace}'; an admin of "
                f"'{namespace}' can grant write (keephub org add-member {namespace} {actor.name} --role write)")
    if actor.scopes is None or any(scope.covers(needed) for scope in actor.scopes):
        return None
    listed = ", ".join(str(scope) for scope in actor.scopes) or "nothing"
    if actor.is_job_token:
        return (f"this job's token may write only to {listed}, the repo job {actor.job_id} was submitted for; "
                f"{needed} is outside it")
    flag = f"--namespace {needed.name}" if needed.kind == "namespace" else f"--repo {needed}"
    return (f"the token '{actor.token_name}' may write only to {listed}, not {needed}; use a token that covers "
            f"it (keephub token create {actor.name} --role write {flag})")


def access_token_info(actor: Actor) -> dict:
    """whoami's `auth.accessToken`, as huggingface_hub reads it: a scoped write token is `fineGrained` and lists
    what it may write under `fineGrained.scoped`; it reads whatever its user reads."""
    info: dict = {"displayName": actor.token_name, "role": actor.token_role,
                  "createdAt": actor.token_created_at.isoformat()}
    if actor.scopes is None or actor.token_role != "write":
        return info
    scoped = []
    for scope in actor.scopes:
        if scope.kind == "namespace":
            entity = {"type": "user" if scope.name == actor.name else "org", "name": scope.name}
            permissions = ["repo.content.read", "repo.write"] + ([] if actor.is_job_token else ["job.write"])
        else:
            entity, permissions = {"type": scope.kind, "name": scope.name}, ["repo.content.read", "repo.write"]
        scoped.append({"entity": entity, "permissions": permissions})
    return info | {"role": "fineGrained",
                   "fineGrained": {"canReadGatedRepos": True, "global": [], "scoped": scoped}}
