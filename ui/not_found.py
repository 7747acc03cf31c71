"""The answer to an address that is no page of the app: say so, and link every page."""

from __future__ import annotations

from urllib.parse import urlparse

import streamlit as st

from ui.navigation import HOME, PAGES


def unknown_path() -> str | None:
    """The path the browser asked for when it names no page ("nothing"), else None.

    For an unknown path Streamlit runs the default page and ``st.context.url`` keeps the path as typed;
    for a known one it ends in that page's path. What is left after the server's base URL path is compared
    with the pages' paths."""
    url = st.context.url
    if not url:
        return None
    path = urlparse(url).path.strip("/")
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    if base and (path == base or path.startswith(base + "/")):
        path = path[len(base):].strip("/")
    return None if path in {"", HOME, *(p.url_path for p in PAGES)} else path


def page_not_found(path: str) -> None:
    st.title("Page not found")
    st.error(f"There is no page at /{path}. Choose one of the pages below, or check the address.",
             icon=":material/link_off:")
    for entry in PAGES:
        st.page_link(entry.path, label=entry.title, icon=entry.icon)
