"""The Hugging Face Hub HTTP API: repos, commits, LFS, file resolution, with access control as on the Hub."""

from keephub.hub.routes import EncodedSlashes, routes
from keephub.hub.service import Hub

__all__ = ["EncodedSlashes", "Hub", "routes"]
