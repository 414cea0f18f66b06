"""Pages for people, built from the same Hub calls as the API; each page has a JSON twin (?format=json)."""

from keephub.web.pages import routes

__all__ = ["routes"]
