"""ASGI middleware: an unknown address of several segments (``/a/b/c``) is redirected to its first segment.

Why: Streamlit answers every unknown path with its index page, whose scripts are linked relative to the
address (``./static/js/...``). Below ``/a/b/`` they resolve to ``/a/b/static/js/...``, which is the index page
again, not a script: the browser shows a blank page forever. One segment deep they resolve correctly, and the
app then shows its "page not found" (`ui.not_found`). Streamlit's own routes pass through untouched.
"""

from __future__ import annotations

from urllib.parse import quote

STREAMLIT_PREFIXES = frozenset({"_stcore", "static", "media", "component", "app", "auth", "oauth2callback", "~"})


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
