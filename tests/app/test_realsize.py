"""The explorer at real size (124M–135M parameters, 144–270 heads, 50k tokens), checked on small
stand-ins: figures keep every head, a whole vocabulary is searched rather than drawn, sweeps
over every head show progress, cancel and are kept, and a model or text that would not fit in
memory is a message. Timing itself is measured by ``bench/bench_realsize.py``.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

import lm_core
from app import figures as F
from app.core import memory, sweeps, vocab

from test_app import app, charts, env, no_problem  # noqa: F401  (the AppTest fixture and helpers)


def _patterns(H: int, T: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(H, T, T))
    s[:, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] = -np.inf
    e = np.exp(s - s.max(axis=2, keepdims=True))
    return e / e.sum(axis=2, keepdims=True)


# -- figures with many heads ----------------------------------------------------------------------


@pytest.mark.parametrize("H,kv", [(12, None), (9, [h // 3 for h in range(9)])])
def test_layer_grid_keeps_every_head_with_its_own_axes(H, kv):
    T = 64
    pats = _patterns(H, T)
    labels = F.token_labels([f"t{i}" for i in range(T)])
    fig = F.attention_grid(pats, labels, layer=7, selected_head=4, kv_heads=kv)
    assert len(fig.data) == H
    spec = json.loads(fig.to_json())
    axes = {(t["xaxis"], t["yaxis"]) for t in spec["data"]}
    assert len(axes) == H  # one panel per head, none drawn over another
    for h, tr in enumerate(fig.data):
        assert tr.z.dtype == np.float32 and np.array_equal(tr.z, pats[h].astype(np.float32))
        assert list(tr.y) == labels and f"L7 H{h}<br>" in tr.hovertemplate
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == H and "<b>head 4" in titles[4]
    if kv:
        assert titles[8] == "head 8 · KV 2"
    domains = [spec["layout"]["xaxis" + ("" if h == 0 else str(h + 1))]["domain"] for h in range(H)]
    assert all(0 <= a < b <= 1 for a, b in domains)


def test_query_attention_keeps_all_270_heads_and_labels_each_layer():
    L, H, T = 30, 9, 40
    rows = np.random.default_rng(0).random((L, H, T)).astype(np.float32)
    labels = F.token_labels([f"t{i}" for i in range(T)])
    fig = F.query_attention(rows, labels, labels[-1], L, H)
    z = fig.data[0].z
    assert z.shape == (L * H, T) and np.array_equal(z, rows.reshape(L * H, T))
    assert len(set(fig.data[0].y)) == L * H  # every head its own row
    assert list(fig.layout.yaxis.ticktext) == [f"L{l}" for l in range(L)]  # 30 labels, not 270
    small = F.query_attention(rows[:2, :3], labels, labels[-1], 2, 3)
    assert small.layout.yaxis.tickvals is None  # a small model names every row


def test_head_score_overview_at_270_heads_keeps_every_cell_clickable():
    L, H = 30, 9
    z = np.random.default_rng(1).random((L, H))
    fig = F.head_score_overview(z, "induction", selected=(29, 8), groups=[[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    hm, overlay = fig.data
    assert hm.z.shape == (L, H) and hm.texttemplate is None  # 270 numbers would be unreadable: hover has them
    assert len(overlay.customdata) == L * H
    assert {tuple(c) for c in overlay.customdata} == {(l, h) for l in range(L) for h in range(H)}
    assert F.head_score_overview(z[:4, :4], "induction").data[0].texttemplate == "%{z:.2f}"


def test_figures_built_without_validation_still_carry_the_template_and_export():
    T = 5
    figs = [F.attention_heatmap(_patterns(1, T)[0], list("abcde")), F.attention_grid(_patterns(3, T), list("abcde"), 0),
            F.head_score_overview(np.ones((2, 3)), "induction"),
            F.query_attention(np.ones((2, 3, T)), list("abcde"), "e", 2, 3)]
    for fig in figs:
        spec = json.loads(fig.to_json())
        assert spec["layout"]["template"]["layout"]["plot_bgcolor"] == "white"  # the template, not its bare name
        assert "<div" in fig.to_html(include_plotlyjs=False)  # what the export bundle writes


# -- a whole vocabulary ---------------------------------------------------------------------------


def test_top_k_is_the_sorted_head_of_the_distribution():
    p = np.random.default_rng(0).dirichlet(np.ones(50257)).astype(np.float32)
    ids, probs = vocab.top_k(p, 10)
    assert list(ids) == list(np.argsort(-p, kind="stable")[:10])
    assert np.all(np.diff(probs) <= 0) and np.array_equal(probs, p[ids])
    assert len(vocab.top_k(p, 0)[0]) == 0 and len(vocab.top_k(p[:3], 10)[0]) == 3


def test_ranks_count_the_strictly_more_likely_tokens():
    p = np.array([0.1, 0.4, 0.1, 0.3, 0.1], dtype=np.float32)
    assert list(vocab.ranks(p, [1, 3, 0, 2, 4])) == [1, 2, 3, 3, 3]
    big = np.random.default_rng(2).random(49152).astype(np.float32)
    order = np.argsort(-big)
    assert list(vocab.ranks(big, order[:5])) == [1, 2, 3, 4, 5]


def test_find_tokens_prefers_exact_pieces_then_the_word_after_a_space():
    pieces = ["the", "␣the", "The", "other", "␣", "x", "there", "↵"]
    assert vocab.find_tokens("the", pieces)[:2] == [0, 1]
    assert vocab.find_tokens("␣the", pieces)[0] == 1
    assert vocab.find_tokens(" the", pieces)[0] == 1  # a typed space means the ␣ piece
    assert vocab.find_tokens("#5", pieces) == [5] and vocab.find_tokens("id:99", pieces) == []
    found = vocab.find_tokens("the", pieces)
    assert set(found) == {0, 1, 2, 3, 6} and found.index(2) < found.index(3)  # shorter pieces first
    assert vocab.find_tokens("\n", pieces) == [7] and vocab.find_tokens("zzz", pieces) == []
    assert len(vocab.find_tokens("e", ["e" * (i + 1) for i in range(100)])) == vocab.MAX_MATCHES


def test_find_tokens_with_a_tokenizer_finds_what_the_text_encodes_to():
    tok = lm_core.BPETokenizer.train("the cat sat on the mat with the hat " * 50, vocab_size=300)
    pieces = tok.pieces(range(tok.vocab_size))
    found = vocab.find_tokens(" cat", pieces, tok)
    assert found and set(tok.encode(" cat")) <= set(found)


def test_lookup_tables_give_probability_and_rank_per_distribution():
    pieces = ["a", "b", "c", "d"]
    p = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    q = np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32)
    df = vocab.lookup_table([0, 3], pieces, {"A": p, "B": q})
    assert list(df["token"]) == ["a", "d"] and list(df["rank (A)"]) == [4, 1] and list(df["rank (B)"]) == [1, 4]
    assert np.allclose(df["p (B)"], [0.4, 0.1])
    by = vocab.lookup_by_distribution([2], pieces, {f"layer {i}": p for i in range(6)})
    assert len(by) == 6 and list(by["rank 'c' #2"]) == [2] * 6


# -- sweeps ----------------------------------------------------------------------------------------


def test_a_sweep_in_chunks_equals_the_sweep_in_one_go(tiny_model):
    ids = [1, 5, 2, 7, 3, 9, 4]
    whole = lm_core.analysis.head_ablation_effects(tiny_model, ids, mode="zero")
    sw = sweeps.ablation_sweep("tiny", tiny_model, ids, "zero")
    steps = 0
    while not sw.finished:
        assert sw.advance(tiny_model, budget_s=0.0) == 1  # one head per chunk at a zero budget
        steps += 1
        assert sw.fraction == steps / sw.total
    assert steps == sw.total == tiny_model.config.n_layer * tiny_model.config.n_head
    expect = whole["loss_increase"].to_numpy(np.float32).reshape(sw.n_layer, sw.n_head)
    assert np.allclose(sw.values, expect, atol=1e-5)


def test_sweep_results_are_shared_safely_and_bounded():
    store = sweeps.SweepResults(max_entries=8)

    def writer(i: int) -> None:
        for j in range(50):
            store.put(("k", i, j), np.full((2, 2), i * 100 + j))
            got = store.get(("k", i, j))
            assert got is None or float(got[0, 0]) == i * 100 + j  # never another key's values

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 8
    store.put("x", np.zeros((2, 2)))
    with pytest.raises(ValueError):
        store.get("x")[0, 0] = 1.0  # read-only: shared by every session


# -- memory ----------------------------------------------------------------------------------------


def test_memory_estimates_and_the_refusal_message():
    smol = lm_core.ModelConfig(vocab_size=49152, block_size=2048, n_layer=30, n_head=9, n_kv_head=3, n_embd=576,
                               d_mlp=1536, norm="rmsnorm", pos="rotary", mlp="swiglu", bias=False)
    assert 130e6 < smol.n_params < 140e6
    assert memory.load_bytes(smol) == smol.n_params * 8
    assert memory.capture_bytes(smol, 128) > memory.capture_bytes(smol, 64)
    memory.check_capture(smol, 64)  # this machine has the few hundred MB it takes, or the suite could not run
    with pytest.raises(memory.MemoryProblem, match=r"needs about 1\.00 GB .* has 0\.50 GB available"):
        memory.check(2**30, "This", "Do that.", available=2**29)
    free = memory.available_bytes()
    assert free is None or free > 0


# -- the app ---------------------------------------------------------------------------------------


def _find_table(at, key_word: str):
    tables = [d.value for d in at.dataframe if any(key_word in str(c) for c in d.value.columns)]
    assert tables, [list(d.value.columns) for d in at.dataframe]
    return tables[-1]


def test_token_search_boxes_find_any_token_with_its_probability_and_rank(env):
    at = app()
    at.switch_page("views/generate.py").run()
    at.button(key="gen_btn_next").click().run()
    step = at.session_state["gen_trace"].steps[0]
    drawn = int(step.token_id)
    at.text_input(key="gen_find").set_value(f"#{drawn}").run()
    no_problem(at)
    df = _find_table(at, "rank (model)")
    assert list(df["id"]) == [drawn]
    at_top = [int(i) for i in step.top_ids].index(drawn)
    assert df["p (model)"].iloc[0] == pytest.approx(float(step.top_before[at_top]), rel=1e-4)
    assert df["rank (model)"].iloc[0] == 1 + int((step.top_before > step.top_before[at_top]).sum())

    at.text_input(key="gen_find").set_value("#999999").run()  # no such id
    no_problem(at)
    assert any("No token of this" in i.value for i in at.info)

    at.switch_page("views/logit_lens.py").run()
    at.text_input(key="lens_find").set_value("e").run()
    no_problem(at)
    df = _find_table(at, "rank 'e'")
    assert list(df[""])[0] == "embeddings" and list(df[""])[-1].startswith("after block")  # one row per layer

    at.switch_page("views/ablation.py").run()
    at.text_input(key="abl_find").set_value("e").run()
    no_problem(at)
    df = _find_table(at, "rank (ablated)")
    assert df["token"].iloc[0] == "e" and (df["p (intact)"] == df["p (ablated)"]).all()  # nothing switched off

    at.switch_page("views/compare.py").run()
    at.text_input(key="cmp_find").set_value("e").run()
    no_problem(at)
    df = _find_table(at, "rank (")
    assert df["token"].iloc[0] == "e" and len([c for c in df.columns if c.startswith("rank (")]) == 2


def test_sweep_shows_progress_can_be_cancelled_and_is_kept(env, monkeypatch):
    monkeypatch.setattr(sweeps, "AUTO_SWEEP_COST", 0.0)  # sweep on request, as for a real-size model
    monkeypatch.setattr(sweeps, "CHUNK_SECONDS", 0.0)    # one head per chunk: progress is visible
    at = app()
    at.text_area(key="inspect_text").set_value("a sweep over every head, kept for this text").run()
    at.switch_page("views/ablation.py").run()
    no_problem(at)
    at.button(key="abl_btn_effects").click().run()
    no_problem(at)
    texts = [str(e.proto.text) for e in at.get("progress")]
    assert texts and "1 of" in texts[0]
    total = int(texts[0].split(" of ")[1].split()[0])
    at.run()
    assert "2 of" in str(at.get("progress")[0].proto.text)
    at.button(key="abl_btn_cancel").click().run()
    no_problem(at)
    assert not at.get("progress")
    assert any("Cancelled after 2 of" in i.value for i in at.info)
    assert at.button(key="abl_btn_effects")  # back to the start button

    at.button(key="abl_btn_effects").click().run()
    for _ in range(total + 2):
        if not at.get("progress"):
            break
        at.run()
    no_problem(at)
    assert not at.get("progress")
    grid = [c for k, c in charts(at).items() if k.startswith("abl_grid")][0]
    assert grid["data"][0]["showscale"] is True  # coloured by every head's effect
    assert any(d.proto.id.endswith("abl_effects_csv") for d in at.get("download_button"))

    again = app()  # another session, same model and text: instant, no button, no sweep
    again.text_area(key="inspect_text").set_value("a sweep over every head, kept for this text").run()
    again.switch_page("views/ablation.py").run()
    no_problem(again)
    assert not again.get("progress")
    assert any(d.proto.id.endswith("abl_effects_csv") for d in again.get("download_button"))
    assert not [b for b in again.button if b.key == "abl_btn_effects"]


def test_a_model_or_text_too_large_for_memory_is_a_message(env, monkeypatch):
    at = app()
    no_problem(at)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000)  # 10 kB free
    at.text_area(key="inspect_text").set_value("a new text to inspect").run()
    assert not at.exception
    msg = " ".join(e.value for e in at.error)
    assert "needs about" in msg and "available" in msg and "Shorten the text" in msg
    assert not charts(at)  # nothing captured

    from app.core import models

    with pytest.raises(memory.MemoryProblem, match="needs about .* of memory"):
        models.load_run(models.default_model_dir())
