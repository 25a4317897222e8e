"""Small Streamlit building blocks shared by the pages: a chart with its caption and downloads,
a CSV download, the token strip, and error display. Pages stay short and look alike."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lm_core import metrics

from .. import figures, resources, state
from ..core import memory, vocab
from ..core.text import Encoded, InputProblem, encode_text, inspect_limit
from ..figures import visible

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _file_stem(name: str) -> str:
    return _SAFE.sub("-", name).strip("-").lower() or "figure"


# The browser draws what has arrived about every 10 ms, all of it in one go. When a click changes
# something small at the top (a "starting" note, the token just drawn) and a lot below it (a setup
# section, four charts), a pause this long sends the small thing on its own: it is on screen in a
# fraction of a second instead of after the whole batch (0.3 s instead of 1-2 s on a small laptop).
SHOW_NOW_S = 0.08


def show_now() -> None:
    """Let the browser draw what this run has sent so far before the rest follows."""
    import time

    time.sleep(SHOW_NOW_S)


def plot_config(name: str) -> dict:
    """Plotly modebar: the camera button downloads a PNG named after the figure."""
    return {
        "displaylogo": False,
        "toImageButtonOptions": {"format": "png", "filename": _file_stem(name), "scale": 2},
        "modeBarButtonsToRemove": ["lasso2d", "select2d"],
    }


def figure_html(fig: go.Figure) -> str:
    """The figure as a standalone HTML page (plotly.js embedded: it opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def figure_png(fig: go.Figure) -> bytes:
    """The figure as PNG via kaleido (a headless Chromium); runs only when the button is clicked."""
    return fig.to_image(format="png", scale=2)


# What st.plotly_chart's "streamlit" theme sets where a figure sets nothing, as plotly.js draws it
# (read from the drawn charts' _fullLayout in Chromium): figures.fit_margins needs it to start the
# margins where the drawn labels end.
STREAMLIT_PLOTLY_LOOK = {"title_size": 14, "standoff_x": 20, "standoff_y": 24, "colorbar_title_size": 14}


def chart(fig: go.Figure, key: str, caption: str, name: str | None = None,
          on_select: str | Callable = "ignore", selection_mode: str | tuple = "points",
          downloads: bool = True):
    """Draw ``fig``, its caption (how to read it) and PNG / HTML downloads (built only when
    clicked; the modebar's camera icon also saves a PNG in the browser). Returns the selection
    event when ``on_select`` is not "ignore". The figure is also registered for the page's
    export bundle (sidebar, "Export bundle")."""
    name = name or key
    state.register_figure(key, _file_stem(name), fig, caption)  # the export bundle takes what the page drew
    kwargs = {}
    if on_select != "ignore":
        kwargs = {"on_select": on_select, "selection_mode": selection_mode}
    figures.fit_margins(fig, STREAMLIT_PLOTLY_LOOK)  # the first draw fits: no second draw to widen them
    event = st.plotly_chart(fig, width="stretch", key=key, config=plot_config(name), **kwargs)
    st.caption(caption)
    if downloads:
        row = st.container(horizontal=True, gap="small")
        stem = _file_stem(name)
        row.download_button("PNG", data=lambda f=fig: figure_png(f), file_name=f"{stem}.png", mime="image/png",
                            key=f"{key}__png", on_click="ignore", type="tertiary", icon=":material/image:",
                            help="Download this figure as a PNG image (rendered on the server; the camera "
                                 "icon on the chart saves one from the browser)")
        row.download_button("HTML", data=lambda f=fig: figure_html(f), file_name=f"{stem}.html",
                            mime="text/html", key=f"{key}__html", on_click="ignore", type="tertiary",
                            icon=":material/download:",
                            help="Download this figure as an interactive HTML page that opens offline")
    return event


def session_id() -> str:
    """This tab's Streamlit session (every tab and every refresh is a session of its own)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "local"


def token_search(lm, key: str, dists: Callable[[], dict], what: str, label: str = "Find any token") -> None:
    """A search box over the whole vocabulary: the tokens matching what is typed, each with its
    probability and rank (1 = most likely) in every distribution ``dists()`` returns (``{name:
    [V]}``; called only once something is typed, so a page pays for the full distribution only
    when asked). Charts show the top k; this finds the other 50,000."""
    query = st.text_input(label, key=key, placeholder="a token, e.g. ␣the (␣ or a space for the space), or #id",
                          help=f"Any of the {lm.config.vocab_size:,} tokens: its probability and rank {what}. "
                               "Exact pieces first (also with a leading space, as BPE writes a word after a "
                               "space), then the tokens your text encodes to, then pieces containing it.")
    if not query:
        return
    pieces = resources.vocab_pieces(lm.key, _tokenizer=lm.tokenizer)
    ids = vocab.find_tokens(query, pieces, lm.tokenizer)
    if not ids:
        st.info(f"No token of this {len(pieces):,}-token vocabulary matches {query!r}. Try a shorter piece, or "
                f"#id for a token id.", icon=":material/search_off:")
        return
    d = dists()
    # a few distributions: one row per token; many (one per layer): one row per distribution
    table = vocab.lookup_table(ids, pieces, d) if len(d) <= 4 else vocab.lookup_by_distribution(ids, pieces, d)
    fmt = {c: st.column_config.NumberColumn(format="%.3g") for c in table.columns if c.startswith("p ")}
    st.dataframe(table, hide_index=True, width="stretch", column_config=fmt)
    shown = f" (the first {vocab.MAX_MATCHES})" if len(ids) >= vocab.MAX_MATCHES else ""
    st.caption(f"{len(ids)} token(s) matching {query!r}{shown}: probability and rank {what} (rank 1 = the most "
               f"likely of {len(pieces):,}).")


def browser_id() -> str:
    """Who is asking, as stable as the browser: a refresh or a second tab is the same person.

    Streamlit's XSRF cookie lives as long as the browser keeps it; without it (tests, a
    cookie-less client) the session id stands in. Hashed: the token itself is never stored."""
    import hashlib

    token = ""
    try:
        token = st.context.cookies.get("_streamlit_xsrf", "") or ""
    except Exception:  # no request context (AppTest)
        token = ""
    if not token:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        token = ctx.session_id if ctx is not None else "local"
    elif token.startswith("2|") and token.count("|") == 3:  # tornado: "2|mask|masked token|time"
        _, mask, masked, _ = token.split("|")
        try:  # the token itself is stable; the mask changes whenever the cookie is re-sent
            token = bytes(a ^ b for a, b in zip(bytes.fromhex(mask), bytes.fromhex(masked))).hex()
        except ValueError:
            pass
    return hashlib.sha256(str(token).encode("utf-8")).hexdigest()[:16]


def csv_download(df: pd.DataFrame, name: str, key: str, label: str = "CSV", where=None) -> None:
    """A download button for a table as CSV (built only when clicked)."""
    (where or st).download_button(label, data=lambda d=df: d.to_csv(index=False).encode("utf-8"),
                       file_name=f"{_file_stem(name)}.csv", mime="text/csv", key=key,
                       on_click="ignore", icon=":material/table_view:", type="tertiary",
                       help="Download this table as CSV")


def token_strip(pieces: Sequence[str], ids: Sequence[int], highlight: int | None = None,
                extra: Sequence[str] | None = None) -> None:
    """The tokens as chips: position, the piece (whitespace visible) and, on hover, the id."""
    chips = []
    for i, (p, t) in enumerate(zip(pieces, ids)):
        tip = f"position {i} · id {t}" + (f" · {extra[i]}" if extra else "")
        cls = "lm-chip lm-hl" if i == highlight else "lm-chip"
        chips.append(
            f'<span class="{cls}" title="{html.escape(tip)}"><sub>{i}</sub>{html.escape(visible(p))}</span>'
        )
    st.html(
        "<style>.lm-strip{display:flex;flex-wrap:wrap;gap:3px;font-family:ui-monospace,Menlo,monospace;"
        "font-size:13px;margin:2px 0 6px}.lm-chip{background:#eef1f8;border:1px solid #d4dcf0;border-radius:4px;"
        "padding:1px 5px;white-space:pre}.lm-chip sub{color:#8a94a6;font-size:9px;margin-right:2px}"
        ".lm-hl{background:#fde2d8;border-color:#e4572e}</style>"
        f'<div class="lm-strip">{"".join(chips)}</div>'
    )


def show_problem(exc: BaseException, what_to_do: str = "") -> None:
    """An error the user can act on, as ``st.error`` (never a traceback)."""
    st.error(problem_text(exc, what_to_do), icon=":material/error:")


def problem_text(exc: BaseException, what_to_do: str = "") -> str:
    """The error's sentence, then what to do, as two sentences: never run together."""
    msg = str(exc).strip() or type(exc).__name__
    if what_to_do and not msg.endswith((".", "!", "?", ":")):
        msg += "."
    return f"{msg} {what_to_do}".strip()


def page_header(title: str, blurb: str) -> None:
    st.title(title)
    st.caption(blurb)


def time_travel_note(lm) -> None:
    """One line saying which training step's weights the page shows, when it is not the latest."""
    if getattr(lm, "time_travelling", False):
        st.info(f"Time travel: these are the weights of **step {lm.step:,}** (the run's latest is step "
                f"{lm.final_step:,}). Move the slider in the sidebar to change the step.",
                icon=":material/history:")


def inspected_text(lm, *, height: int, help: str, min_tokens: int = 1, stop: bool = True) -> "Encoded | None":
    """The shared ``Text to inspect`` box, encoded for ``lm``: shows a problem (and stops the page,
    or returns None with ``stop=False``), warns about what was cut, and registers the text for export."""
    text = st.text_area("Text to inspect", key=state.INSPECT_TEXT, height=height, help=help)
    try:
        enc = encode_text(lm.tokenizer, text, **inspect_limit(lm.config), keep="start", what="text to inspect")
        if len(enc.ids) < min_tokens:
            raise InputProblem(f"The text is {len(enc.ids)} token(s); type at least {min_tokens} so there is "
                               f"a next token to predict.")
        memory.check_capture(lm.config, len(enc.ids))  # before the forward: a message, not a killed server
    except InputProblem as e:
        show_problem(e)
        if stop:
            st.stop()
        return None
    if enc.note:
        st.warning(enc.note, icon=":material/content_cut:")
    state.set_export_text(text, enc.ids, enc.pieces)
    return enc


def metric_help(names: Sequence[str] | None = None) -> str:
    """The help line of a head-metric picker, from the registry: "label: what it measures; …"."""
    names = list(names) if names is not None else list(metrics.HEAD_METRICS)
    return "; ".join(f"{metrics.head_metric(n).label}: {metrics.head_metric(n).help}" for n in names) + "."
