"""Serving entry point: `streamlit run serve.py` runs app.py, with three additions: the server's job queue and its
warm-up start with the server (not at the first visit); deep unknown addresses (``/a/b/c``) get the app's "page not
found" instead of a blank page (ui/deep_paths.py); a page whose lazily loaded code failed to arrive reloads once by
itself, and the Plotly code is fetched as the page opens (ui/chunk_retry.py)."""

import contextlib

import streamlit as st
from starlette.middleware import Middleware

from ui.chunk_retry import ChunkRetry
from ui.deep_paths import DeepPathRedirect
from ui.waiting import queue


@contextlib.asynccontextmanager
async def lifespan(app):
    jobs = queue()  # the job queue, and the warm-up queued behind anything a person asks for
    yield
    jobs.close()


app = st.App("app.py", lifespan=lifespan,
             middleware=[Middleware(DeepPathRedirect, base=st.get_option("server.baseUrlPath") or ""),
                         Middleware(ChunkRetry)])
