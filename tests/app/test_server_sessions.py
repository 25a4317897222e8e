"""Several sessions of one running server acting at the same moment, over the app's own websocket
protocol (no browser needed): each sees only its own text and its own generation."""

from __future__ import annotations

import asyncio
import json

from tests.app.test_browser import streamlit_server
from tests.st_session import ProtocolSession

N = 4


def _heatmap_text(spec: str) -> str:
    """The text a token-by-token heatmap shows: its row labels are ``position·piece``."""
    labels = json.loads(spec)["data"][0]["y"]
    return "".join(str(l).split("·", 1)[1] for l in labels).replace("␣", " ")


async def _workshop(url: str) -> dict:
    people = [ProtocolSession(url) for _ in range(N)]
    await asyncio.gather(*(p.open("") for p in people))
    out = {"texts": [], "shown": [], "tokens": [], "exceptions": []}
    for r in range(2):
        texts = [f"s{i}r{r} " + "ab" * (3 * i + r + 2) for i in range(N)]  # a different length each
        await asyncio.gather(*(p.set_text("Text to inspect", t) for p, t in zip(people, texts)))
        out["texts"].append(texts)
        out["shown"].append([_heatmap_text(p.charts[0]) for p in people])
    await asyncio.gather(*(p.open("generate") for p in people))
    for k in range(1, 3):
        await asyncio.gather(*(p.press("Next token") for p in people))
        out["tokens"].append([sum(t.count('class="lm-gen"') for t in p.texts) for p in people])
    out["exceptions"] = [e for p in people for e in p.exceptions]
    for p in people:
        await p.close()
    return out


def test_sessions_acting_at_once_each_see_only_their_own_work(tmp_path):
    env = {"LM_LENS_RUNS_DIR": str(tmp_path / "runs"), "LM_LENS_CACHE": str(tmp_path / "cache")}
    with streamlit_server(env) as url:
        out = asyncio.run(_workshop(url))
    assert out["exceptions"] == []
    for texts, shown in zip(out["texts"], out["shown"]):
        assert shown == texts  # each heatmap shows its own session's text, whole, and nothing else
    assert out["tokens"] == [[1] * N, [2] * N]  # each generation grew by its own presses only
