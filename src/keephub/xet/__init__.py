"""Xet storage: the hub's token endpoints and an in-process CAS (xorbs, shards, reconstruction, dedup)."""

from keephub.xet.routes import routes
from keephub.xet.store import Cas

__all__ = ["Cas", "routes"]
