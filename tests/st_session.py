"""A Streamlit session without a browser: the app's own websocket protocol, spoken from Python.

Each ``ProtocolSession`` is a real server session (its own ``st.session_state``, its own script
runs, the same messages a browser tab sends) that draws nothing. ``bench/bench_live.py`` uses it
for the people in a workshop whose browsers run on their own computers, so the server's two cores
are not shared with five Chromium renderers that no deployment would put on the server;
``tests/app/test_server_sessions.py`` for sessions acting at once without a browser.

Only what those need: open a page, find a widget by its label, set a text or press a button,
and wait until that rerun has finished on the server.
"""

from __future__ import annotations

import asyncio
import time

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

_WIDGETS = ("text_area", "text_input", "button", "selectbox", "slider", "number_input", "checkbox")


class ProtocolSession:
    """One server session over the websocket, driven from Python."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.ws = None
        self.pages: dict[str, str] = {}      # url pathname ("" for the main page) -> page_script_hash
        self.page_hash = ""
        self.widgets: dict[tuple[str, str], str] = {}  # (type, label) -> widget id
        self.values: dict[str, object] = {}  # widget id -> value sent (texts persist across reruns)
        self.exceptions: list[str] = []
        self.texts: list[str] = []           # markdown / code / html text of the last run
        self.charts: list[str] = []          # Plotly figure JSON of the last run, in page order

    async def connect(self) -> None:
        host = self.url.split("://", 1)[1]
        self.ws = await websockets.connect(f"ws://{host}/_stcore/stream", subprotocols=["streamlit"],
                                           origin=f"http://{host}", max_size=2**28)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def open(self, path: str = "") -> float:
        """Run the page at ``path`` ("" = the main page); seconds until its script finished."""
        if self.ws is None:
            await self.connect()
        self.page_hash = self.pages.get(path, "")
        self.widgets.clear()
        self.values.clear()
        return await self._rerun(page_name=path)

    async def set_text(self, label: str, text: str) -> float:
        """Type ``text`` into the text box labelled ``label`` and submit it (Ctrl+Enter)."""
        wid = self._widget(("text_area", "text_input"), label)
        self.values[wid] = text
        return await self._rerun()

    async def press(self, label: str) -> float:
        """Press the button labelled ``label``."""
        wid = self._widget(("button",), label)
        return await self._rerun(trigger=wid)

    def _widget(self, kinds, label: str) -> str:
        for kind in kinds:
            if (kind, label) in self.widgets:
                return self.widgets[(kind, label)]
        raise LookupError(f"no {'/'.join(kinds)} labelled {label!r} on this page "
                          f"(seen: {sorted(l for _, l in self.widgets)})")

    async def _rerun(self, trigger: str | None = None, page_name: str = "") -> float:
        msg = BackMsg()
        cs = msg.rerun_script
        cs.query_string = ""
        cs.page_script_hash = self.page_hash
        cs.page_name = page_name
        for wid, value in self.values.items():
            w = cs.widget_states.widgets.add()
            w.id = wid
            w.string_value = str(value)
        if trigger is not None:
            w = cs.widget_states.widgets.add()
            w.id = trigger
            w.trigger_value = True
        t0 = time.perf_counter()
        await self.ws.send(msg.SerializeToString())
        await self._until_finished()
        return time.perf_counter() - t0

    async def _until_finished(self, timeout_s: float = 120) -> None:
        self.texts, self.charts = [], []
        started = False
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), timeout_s)
            fm = ForwardMsg()
            fm.ParseFromString(raw)
            kind = fm.WhichOneof("type")
            if kind == "new_session":
                started = True
                self.page_hash = fm.new_session.page_script_hash or self.page_hash
            elif kind == "navigation":
                for p in fm.navigation.app_pages:
                    self.pages[p.url_pathname] = p.page_script_hash
                self.page_hash = fm.navigation.page_script_hash or self.page_hash
            elif kind == "delta" and fm.delta.WhichOneof("type") == "new_element":
                self._saw(fm.delta.new_element)
            elif kind == "script_finished" and started:
                return

    def _saw(self, el) -> None:
        kind = el.WhichOneof("type")
        if kind in _WIDGETS:
            w = getattr(el, kind)
            self.widgets[(kind, w.label)] = w.id
        elif kind == "exception":
            self.exceptions.append(f"{el.exception.type}: {el.exception.message}")
        elif kind == "plotly_chart":
            self.charts.append(el.plotly_chart.spec)
        elif kind == "markdown":
            self.texts.append(el.markdown.body)
        elif kind == "html":
            self.texts.append(el.html.body)
