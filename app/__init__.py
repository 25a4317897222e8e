"""LM Lens Streamlit app (run ``streamlit run app/main.py``); talks to lm_core's public API only."""
