"""ASGI middleware for `serve.py`: deep unknown addresses, and page addresses opened directly.

Two things it does:

- An unknown address of several segments (``/a/b/c``) is redirected to its first segment. Streamlit answers
  every unknown path with its index page, whose scripts are linked relative to the address (``./static/js/...``).
  Below ``/a/b/`` they resolve to ``/a/b/static/js/...``, which is the index page again, not a script: the
  browser shows a blank page forever. One segment deep they resolve correctly, and the app then shows its "page
  not found" (`ui.not_found`).
- A page's address opened directly (``/samples``): Streamlit's client first guesses that the whole path is the
  server's base and probes ``/samples/_stcore/health`` and ``/samples/_stcore/host-config``; the first guess
  that answers becomes the base, and the page is what follows it. Those two probes are answered 404 below a
  page, so the client falls back to the real base and opens the page (answered, it opened the first page at
  every page's address). Streamlit's other page-relative routes (``/samples/_stcore/stream``) are served as the
  root's.
"""

from __future__ import annotations

from urllib.parse import quote

STREAMLIT_PREFIXES = frozenset({"_stcore", "static", "media", "component", "app", "auth", "oauth2callback", "~"})
BASE_PROBES = frozenset({"_stcore/health", "_stcore/host-config"})  # what the client asks to find the server's base


def strip_page_prefix(path: str, base: str = "") -> str | None:
    """``/components/_stcore/stream`` -> ``/_stcore/stream``: what the page-relative addresses of Streamlit's
    own routes mean (its ASGI server only routes them at the root); None for any other path."""
    base = base.strip("/")
    head = f"/{base}" if base else ""
    rest = path[len(head):] if head and path.startswith(head + "/") else path
    parts = rest.strip("/").split("/")
    if len(parts) >= 3 and parts[0] not in STREAMLIT_PREFIXES and parts[1] in STREAMLIT_PREFIXES:
        return head + "/" + "/".join(parts[1:])
    return None


def is_base_probe_below_page(path: str, base: str = "") -> bool:
    """Whether ``path`` is the client's probe for a base below a page (``/samples/_stcore/health``)."""
    stripped = strip_page_prefix(path, base)
    head = "/" + base.strip("/") if base.strip("/") else ""
    return stripped is not None and stripped[len(head):].strip("/") in BASE_PROBES


def redirect_target(path: str, base: str = "") -> str | None:
    """Where a GET of ``path`` should go instead, or None to serve it as it is."""
    base = base.strip("/")
    rest = path.strip("/")
    if base:
        if rest != base and not rest.startswith(base + "/"):
            return None
        rest = rest[len(base):].strip("/")
    parts = rest.split("/")
    if len(parts) < 2 or parts[0] in STREAMLIT_PREFIXES:
        return None
    return "/" + "/".join(filter(None, (base, quote(parts[0]))))


class DeepPathRedirect:
    """Pure ASGI middleware (websockets and Streamlit's routes pass through)."""

    def __init__(self, app, base: str = ""):
        self.app = app
        self.base = base

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and is_base_probe_below_page(scope.get("path", ""), self.base):
            await send({"type": "http.response.start", "status": 404, "headers": [(b"cache-control", b"no-cache")]})
            await send({"type": "http.response.body", "body": b""})
            return
        stripped = strip_page_prefix(scope.get("path", ""), self.base) if scope["type"] in ("http", "websocket") \
            else None
        if stripped is not None:
            scope = {**scope, "path": stripped, "raw_path": stripped.encode()}
        target = None
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            target = redirect_target(scope.get("path", ""), self.base)
        if target is None:
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 302,
                    "headers": [(b"location", target.encode()), (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body", "body": b""})
