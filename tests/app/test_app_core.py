"""The app's core (app/core) as plain Python: no Streamlit imported, no AppTest needed, and the
layout rules that keep pages away from the model's insides."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lm_core
from lm_core import metrics
from lm_core.tokenizers import CharTokenizer

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
CORE_MODULES = sorted(f"app.core.{p.stem}" for p in (APP / "core").glob("*.py") if p.stem != "__init__")


# -- layout rules ---------------------------------------------------------------------------------


def test_the_core_never_imports_streamlit():
    code = ("import importlib, sys\n"
            f"for name in ['app.core'] + {CORE_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "assert 'streamlit' not in sys.modules, [m for m in sys.modules if m.startswith('streamlit')][:5]\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {"app.core.text", "app.core.inspection", "app.core.generation", "app.core.models",
            "app.core.bundle", "app.core.circuits"} <= set(CORE_MODULES)


def _app_sources():
    return [(p, p.read_text(encoding="utf-8")) for p in APP.rglob("*.py")]


def test_the_app_reaches_the_model_through_lm_core_only():
    """No raw hook names and no embedding parameters in app/: lm_core knows each model family."""
    bad = re.compile(r"hook_[a-z]|\bwpe\b|\bwte\b|blocks\.\{|\.attn\.")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p, src in _app_sources()
            for i, line in enumerate(src.splitlines(), 1) if bad.search(line)]
    assert not hits, "\n".join(hits)


def test_session_keys_are_named_in_state_only():
    """st.session_state is indexed by constants of app/state.py, never by a string literal elsewhere."""
    literal = re.compile(r"session_state(\.(get|pop|setdefault)\(|\[)\s*[\"']")
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p, src in _app_sources() if p.name != "state.py"
            for i, line in enumerate(src.splitlines(), 1) if literal.search(line)]
    assert not hits, "\n".join(hits)
    from app import state

    for name in ("MODEL_PROBLEM", "GEN_PROBLEM", "TRAIN_PAGE_STATUS"):
        assert getattr(state, name).startswith("_")


def test_pages_are_listed_once():
    from app.pages import PAGES, page

    assert len({p.url for p in PAGES}) == len({p.title for p in PAGES}) == len(PAGES)
    assert [p.title for p in PAGES if p.default] == ["Attention"]
    for p in PAGES:
        assert (APP / p.file).is_file(), p.file
    assert {p.file for p in PAGES} == {f"views/{f.name}" for f in (APP / "views").glob("*.py") if f.stem != "__init__"}
    assert page("Train").url == "train"
    main = (APP / "main.py").read_text()
    assert "pages.PAGES" in main and "views/" not in main.split('"""', 2)[2]


# -- the core, unit-tested directly ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    text = "def add(a, b):\n    return a + b\n" * 20
    tok = CharTokenizer.train(text)
    torch.manual_seed(0)
    model = lm_core.GPT(lm_core.ModelConfig(vocab_size=tok.vocab_size, block_size=24, n_layer=2, n_head=2,
                                            n_embd=16)).eval()
    return model, tok, text


def test_encode_text_says_what_was_cut(tiny):
    from app.core.text import InputProblem, encode_text

    _, tok, _ = tiny
    enc = encode_text(tok, "abc" * 20, block_size=8, keep="end", what="prompt")
    assert len(enc.ids) == 8 and "first 52 tokens" in enc.note and len(enc.labels) == 8
    with pytest.raises(InputProblem, match="empty"):
        encode_text(tok, "   ", block_size=8)


def test_inspection_returns_every_registered_metric(tiny):
    from app.core import inspection

    model, tok, _ = tiny
    ids = tok.encode("def add(a, b):")
    ins = inspection.inspect(model, ids)
    T = len(ids)
    assert ins["patterns"].shape == (2, 2, T, T) and ins["patterns"].dtype == np.float32
    np.testing.assert_allclose(ins["patterns"].sum(-1), 1.0, atol=1e-5)
    for name in metrics.HEAD_METRICS:
        assert ins[f"score/{name}"].shape == (2, 2)
    assert ins["resid_norms"].shape == (3, T) and ins["next_id"].shape == (T,)
    table = inspection.scores_table(ins)
    assert list(table.columns) == ["layer", "head", *metrics.HEAD_METRICS] and len(table) == 4


def test_position_map_is_none_without_learned_positions(tiny):
    from app.core import inspection

    model, _, _ = tiny
    sim = inspection.position_similarity(model)
    assert sim.shape == (24, 24) and np.allclose(np.diag(sim), 1.0, atol=1e-5)

    class Rotary(torch.nn.Module):  # a family that encodes positions inside attention: no wpe
        wte = model.wte

    assert inspection.position_similarity(Rotary()) is None
    assert lm_core.analysis.token_embeddings(Rotary()).shape == model.wte.weight.shape


def test_val_windows_come_from_the_trainers_validation_part(tiny):
    from app.core import predictions
    from lm_core.data import split_text

    _, tok, text = tiny
    windows = predictions.val_windows(tok, text, block_size=8, n=2)
    _, val = split_text(text, tok, 8)
    assert windows == (tuple(val.ids[:8].tolist()), tuple(val.ids[8:16].tolist()))


def test_generation_trace_grows_and_branches(tiny):
    from app.core import generation

    model, tok, _ = tiny
    settings = generation.sampling_settings(0.8, 0, 1.0, seed=1)
    trace = generation.start_trace("k", tok, "def ", 24, settings)
    assert generation.extend_trace(model, trace, 3) == 3 and len(trace.ids) == len(trace.prompt_ids) + 3
    again = generation.replay_trace(model, trace, "k2")
    assert again.ids == trace.ids  # same weights, same seed: the same tokens
    alt = int(trace.steps[1].top_ids[1])
    branched = generation.branch_trace(trace, 1, alt, tok.pieces)
    assert len(branched.steps) == 2 and branched.steps[1].token_id == alt and branched.steps[1].branched


def test_step_time_is_measured_with_the_trainers_step():
    from app.core import estimates

    cfg = lm_core.ModelConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16)
    t = estimates.measure_step_time(cfg, batch_size=2, steps=2, device="cpu")
    assert 0 < t < 5
    assert estimates.format_seconds(0.25) == "250 ms" and estimates.format_seconds(None) == "–"


def test_bundle_of_figures_and_activations(tiny):
    import plotly.graph_objects as go

    from app.core import bundle
    from app.core.models import LoadedModel
    from lm_core.export import read_bundle

    model, tok, _ = tiny
    lm = LoadedModel(key="k", label="tiny", kind="default", model=model, tokenizer=tok)
    ids = tok.encode("def ")
    built = bundle.build(lm, "Attention", {"a": bundle.FigureRecord("attention", go.Figure(), "cap")},
                         ("def ", ids, tok.pieces(ids)), png=False)
    back = read_bundle(built.data)
    assert "attention.html" in back.figures and back.meta["cache"].startswith("all")
    assert any(k.endswith("pattern") for k in back.cache)
    small, note = bundle.capture_cache(model, ids, max_bytes=10)
    assert "only" in note and all("resid" in k or k.endswith("pattern") for k in small)


def test_circuits_pick_the_strongest_head_by_direction():
    from app.core import circuits

    per = [(s, {"induction": np.array([[0.1, 0.2 * i]]), "entropy": np.array([[0.5, 2.0 - 0.5 * i]])})
           for i, s in enumerate([0, 10, 20])]
    df = circuits.long_frame(per)
    assert circuits.kinds_in(df) == ["induction", "entropy"]  # the registry's order
    z, steps, heads = circuits.matrix(df, "entropy")
    assert steps == [0, 10, 20] and circuits.strongest_head(z, heads, "entropy") == (0, 0)  # lowest: focused
    z, _, heads = circuits.matrix(df, "induction")
    assert circuits.strongest_head(z, heads, "induction") == (0, 1)  # highest


@pytest.mark.parametrize("seconds, text", [
    (0.4, "400 ms"), (0.9996, "1 s"), (59.6, "60 s"), (299.7, "5 min 00 s"), (239.5, "4 min 00 s"),
    (299.4, "4 min 59 s"), (3599.7, "1 h 00 min"), (7199.0, "2 h 00 min"), (None, "–"), (float("nan"), "–"),
])
def test_durations_never_read_60_seconds_or_minutes(seconds, text):
    from app.core.estimates import format_seconds

    assert format_seconds(seconds) == text


def test_problem_text_keeps_the_error_and_the_advice_as_two_sentences():
    from app.widgets.ui import problem_text

    assert problem_text(ValueError("n_head=3 does not divide n_embd=64"), "Change the settings.") == \
        "n_head=3 does not divide n_embd=64. Change the settings."
    assert problem_text(ValueError("The file is empty."), "Pick another.") == "The file is empty. Pick another."
    assert problem_text(ValueError("bad"), "") == "bad"


def test_fine_tuning_settings_fit_the_pretrained_model():
    from app.core import finetune

    gpt2 = lm_core.ModelConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    assert finetune.freeze_spec("all-but-last", 2, 12) == "all-but-last:2"
    assert finetune.freeze_spec("embeddings", 2, 12) == "embeddings" and finetune.freeze_spec("nothing", 2, 12) is None
    with pytest.raises(ValueError, match="has 12 blocks"):
        finetune.freeze_spec("all-but-last", 13, 12)
    for choice in finetune.FREEZE_CHOICES:  # every choice is one the trainer takes
        lm_core.TrainConfig(freeze=finetune.freeze_spec(choice, 2, 12))
    cut = finetune.model_settings(gpt2, 128, 0.0)
    assert cut.block_size == 128 and cut.n_layer == 12 and cut.vocab_size == 50257
    with pytest.raises(ValueError, match="1024 learned positions"):
        finetune.model_settings(gpt2, 2048, 0.0)
    rotary = gpt2.replace(pos="rotary", block_size=512)
    assert finetune.model_settings(rotary, 1024, 0.0).block_size == 1024  # rotary: only a limit on the input
    assert finetune.snapshots_for(gpt2.n_params) == 4  # 500 MB each: about 2 GB of time travel
    assert finetune.snapshots_for(10_000) == finetune.MAX_SNAPSHOTS
    assert finetune.run_name("EleutherAI/pythia-70m", "builtin:python-docs").startswith("pythia-70m-")
    assert finetune.run_name("/models/my-gpt2/", "x") == "my-gpt2-x"


def test_a_rough_step_time_scales_with_the_work():
    from app.core import estimates

    cfg = lm_core.ModelConfig(vocab_size=50257, block_size=128, n_layer=12, n_head=12, n_embd=768)
    t4 = estimates.rough_step_time(cfg, 4, flops_per_s=1e11)
    assert 3.0 < t4 < 5.0  # 3 × 4 × 2 × ~124 M weights × 128 tokens at 100 GFLOP/s
    assert estimates.rough_step_time(cfg, 8, flops_per_s=1e11) == pytest.approx(2 * t4)
    with pytest.raises(ValueError, match="positive"):
        estimates.rough_step_time(cfg, 4, flops_per_s=0)
