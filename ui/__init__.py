"""Streamlit helpers of the dashboard: URL state, the shared sidebar, cached calls into locality_core, figures.

Only the app (app.py, pages/) imports this package; locality_core never imports streamlit.
"""
