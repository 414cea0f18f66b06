"""Users, organizations, access tokens, and the one permission check every endpoint uses."""

from keephub.accounts.service import (
    AccountError,
    Accounts,
    Actor,
    Role,
)

__all__ = ["Accounts", "Actor", "AccountError", "Role"]
