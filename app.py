"""Locality Explorer: `streamlit run app.py`.

The frame of the app: page config, navigation over the pages in pages/ (listed in ui/navigation.py), and the
shared sidebar (data set, noise levels, seed, device), whose choices live in the URL.
"""

import streamlit as st

from ui.layout import apply_css
from ui.loading import configure_threads
from ui.navigation import build_pages
from ui.not_found import page_not_found, unknown_path
from ui.sidebar import render_sidebar
from ui.state import set_view
from ui.waiting import cache_warning, start_warmup

st.set_page_config(page_title="Locality Explorer", page_icon=":material/grid_on:", layout="wide",
                   initial_sidebar_state="collapsed",  # the figures get the width; the sidebar is one click away
                   menu_items={"About": "Locality Explorer: how the data's statistics shape what image diffusion "
                                        "denoisers look at (Lukoianov et al., NeurIPS 2025)."})

configure_threads()
start_warmup()  # once per server process (serve.py starts it with the server): every page's default view
page = st.navigation(build_pages(), position="top")  # one press to change page; the sidebar stays shut
if (missing := unknown_path()) is not None:
    page_not_found(missing)
    st.stop()
view = render_sidebar()
set_view(view)
apply_css(view.present)
if (warning := cache_warning()) is not None:
    st.warning(warning, icon=":material/folder_off:")
page.run()
