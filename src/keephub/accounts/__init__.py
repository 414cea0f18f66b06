"""Users, organizations, access tokens, and the one permission check every endpoint uses."""

from keephub.accounts.access import (
    NamespaceTarget,
    RepoTarget,
    access_token_info,
    allowed,
    authorize,
    refusal_of,
    require_actor,
)
from keephub.accounts.scopes import Scope, parse_scope
from keephub.accounts.service import (
    INVALID_CREDENTIALS,
    AccountError,
    Accounts,
    Actor,
    Role,
)

__all__ = ["Accounts", "Actor", "AccountError", "INVALID_CREDENTIALS", "NamespaceTarget", "RepoTarget", "Role",
           "Scope", "access_token_info", "allowed", "authorize", "parse_scope", "refusal_of", "require_actor"]
