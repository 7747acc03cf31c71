"""Serving entry point: `streamlit run serve.py` runs app.py, and sends deep unknown addresses (``/a/b/c``)
to the app's "page not found" instead of a blank page (see ui/deep_paths.py)."""

import streamlit as st
from starlette.middleware import Middleware

from ui.deep_paths import DeepPathRedirect

app = st.App("app.py", middleware=[Middleware(DeepPathRedirect, base=st.get_option("server.baseUrlPath") or "")])
