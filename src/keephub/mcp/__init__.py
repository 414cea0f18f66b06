"""MCP: the `hf_jobs` tool of the Hugging Face MCP server, and the Hub tools around it, served by keephub.

Over streamable HTTP at `/mcp` of every keephub (`Endpoint`, mounted by the app) and over stdio as
`keephub mcp` (`serve_stdio`, which forwards each call to a keephub's `/mcp`). See docs/mcp.md.
"""

from keephub.mcp.endpoint import Endpoint
from keephub.mcp.stdio import serve_stdio

__all__ = ["Endpoint", "serve_stdio"]
