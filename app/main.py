"""LM Lens: the Streamlit entry point. Run with ``streamlit run app/main.py`` from the repo root.

Sets the page up, draws the shared sidebar (model picker) and hands over to ``st.navigation``,
one file per page in ``app/views/``.
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

from app import active, state  # noqa: E402
from lm_core.runtime import tune_allocator  # noqa: E402

tune_allocator()  # keep freed activation memory: full captures ~1.2x a plain forward instead of ~1.6x

st.set_page_config(page_title="LM Lens", page_icon=":material/neurology:", layout="wide",
                   initial_sidebar_state="expanded")

state.init()
state.clear_page_record()

PAGES = [
    st.Page("views/train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("views/attention.py", title="Attention", icon=":material/grid_on:", url_path="attention",
            default=True),
    st.Page("views/generate.py", title="Generate", icon=":material/edit_note:", url_path="generate"),
    st.Page("views/embeddings.py", title="Embeddings", icon=":material/scatter_plot:", url_path="embeddings"),
    st.Page("views/logit_lens.py", title="Logit lens", icon=":material/layers:", url_path="logit-lens"),
    st.Page("views/ablation.py", title="Ablation", icon=":material/content_cut:", url_path="ablation"),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
    st.Page("views/mechanics.py", title="Mechanics", icon=":material/function:", url_path="mechanics"),
]

page = st.navigation(PAGES)
export_slot = active.sidebar()
page.run()
active.export_controls(export_slot, page.title)  # after the page: it offers what the page drew
