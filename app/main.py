"""LM Lens: the Streamlit entry point. Run with ``streamlit run app/main.py`` from the repo root.

Sets the page up, draws the shared sidebar (model picker) and hands over to ``st.navigation``,
one file per page in ``app/views/``, listed in ``app/pages.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/main.py` puts app/ on sys.path, not the repository root; the app is a
# package (app.*) that imports lm_core, so put the root first.
_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from app import active, pages, state  # noqa: E402
from lm_core.runtime import freeze_startup_objects, set_serving_threads, tune_allocator, warm_imports  # noqa: E402

tune_allocator()  # keep freed activation memory: full captures ~1.2x a plain forward instead of ~1.6x
set_serving_threads()  # one torch thread per request: sessions share the cores (lm_core.runtime)
freeze_startup_objects()  # the modules loaded so far are never garbage: full collections skip them

st.set_page_config(page_title="LM Lens", page_icon=":material/neurology:", layout="wide",
                   initial_sidebar_state="expanded")

state.init()
state.clear_page_record()

PAGES = [st.Page(p.file, title=p.title, icon=p.icon, url_path=p.url, default=p.default) for p in pages.PAGES]

page = st.navigation(PAGES)
export_slot = active.sidebar()
active.fallback_notice()
try:
    page.run()
    active.export_controls(export_slot, page.title)  # after the page: it offers what the page drew
finally:  # also when the page stops early (st.stop) or reruns
    # what the Train page's step-time estimate would import while someone waits (torch._dynamo,
    # ~1-2 s of Python): begun after the first page is drawn, so it does not hold up that page
    warm_imports()
