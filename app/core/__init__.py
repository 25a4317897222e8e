"""The app's plain-Python core: what it computes and the records it keeps, without Streamlit.

``text`` (encoding a text box), ``inspection`` (attention, head scores, embeddings, logit lens,
mechanics), ``predictions`` (ablation, comparison, val loss), ``generation`` (traces),
``estimates`` (time per step), ``models`` (where models come from), ``circuits`` (head scores over
training), ``bundle`` (the export zip), ``corpus``. Nothing here imports streamlit (a test checks):
each module is unit-tested directly, and ``app/resources.py`` caches what the pages call.
"""
