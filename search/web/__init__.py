"""The search page (Streamlit): the page, who may see it, which files it may read, its thumbnails, its launcher.

Started by `search app`, `streamlit run app.py` or `streamlit run search/web/page.py`; the
`.streamlit/config.toml` beside page.py binds it to this machine whichever way it starts.
Streamlit puts this folder first on `sys.path` when page.py is the main script, so no module
here may share a name with one of the standard library's (no `token.py`, `secrets.py`, ...).
"""
