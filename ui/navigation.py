"""The pages of the app, in menu order. app.py registers exactly these; a test checks that every file in
pages/ is one of them."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st


@dataclass(frozen=True)
class PageEntry:
    path: str      # relative to the repository root
    title: str     # short: the pages stand in one bar at the top of a 1280 px screen
    icon: str
    url_path: str  # the page's address: /<url_path>?<view state>; the file's stem, so that a link to a page
    #                still finds it on a freshly started server, where Streamlit first runs in its legacy
    #                pages/ mode (see ui.state.current_view)
    default: bool = False


PAGES: list[PageEntry] = [
    PageEntry("pages/sensitivity.py", "Sensitivity", ":material/ads_click:", "sensitivity", default=True),
    PageEntry("pages/samples.py", "Samples", ":material/auto_awesome:", "samples"),
    PageEntry("pages/components.py", "Principal components", ":material/stacked_line_chart:", "components"),
    PageEntry("pages/jacobian.py", "Jacobian basis", ":material/grid_view:", "jacobian"),
    PageEntry("pages/generalisation.py", "Memorisation", ":material/compare:", "generalisation"),
    PageEntry("pages/experiments.py", "Locality follows data", ":material/science:", "experiments"),
    PageEntry("pages/your_data.py", "Your data", ":material/upload:", "your_data"),
]


HOME = "home"  # the hidden page at "/" (see build_pages)


def build_pages() -> list:
    """The st.Page objects of `PAGES` (paths relative to app.py), and the first page once more, hidden, at "/".

    Streamlit serves its default page at "/" only: were Sensitivity the default, a link to /sensitivity would be
    "not found" and rewritten to "/". So every page keeps its own address, and "/" shows the first page too."""
    pages = [st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url_path) for p in PAGES]
    first = next(p for p in PAGES if p.default)
    home = st.Page(first.path, title=first.title, icon=first.icon, url_path=HOME, default=True,
                   visibility="hidden")
    return [home] + pages
