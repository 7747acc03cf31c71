"""The pages of the app, in menu order. app.py registers exactly these; a test checks that every file in
pages/ is one of them."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st


@dataclass(frozen=True)
class PageEntry:
    path: str      # relative to the repository root
    title: str
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
    PageEntry("pages/generalisation.py", "Memorisation to generalisation", ":material/compare:", "generalisation"),
    PageEntry("pages/experiments.py", "Locality follows the data", ":material/science:", "experiments"),
    PageEntry("pages/your_data.py", "Your own data", ":material/upload:", "your_data"),
]


def build_pages() -> list:
    """The st.Page objects of `PAGES` (paths relative to app.py)."""
    return [st.Page(p.path, title=p.title, icon=p.icon, url_path=p.url_path, default=p.default) for p in PAGES]
