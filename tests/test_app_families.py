"""Every page for every model family: a tiny random model of each layout (GPT-2, Llama, Qwen2
with q/k/v biases, Qwen3 with q/k norm, GPT-NeoX with parallel residual and partial rotary),
saved as a run folder by lm_core's trainer and opened as the default model, renders every page
of app/pages.py without an exception; Mechanics shows the family's own steps, Embeddings what
positions mean there, Attention which query heads share a key/value head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import lm_core
from lm_core.corpora import load_corpus
from lm_core.tokenizers import CharTokenizer
from lm_core.train import Trainer

from app.pages import PAGES as PAGE_SPECS

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
CORPUS = "builtin:python-docs"

BASE = dict(block_size=24, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
FAMILIES = {
    "gpt2": {},
    "llama": dict(norm="rmsnorm", pos="rotary", mlp="swiglu", d_mlp=48, n_kv_head=2, bias=False,
                  tie_embeddings=False),
    "qwen2": dict(norm="rmsnorm", pos="rotary", mlp="swiglu", d_mlp=48, n_kv_head=2, bias=False,
                  qkv_bias=True, tie_embeddings=True),
    "qwen3": dict(norm="rmsnorm", pos="rotary", mlp="swiglu", d_mlp=48, n_kv_head=1, bias=False,
                  qk_norm=True, d_head=12),
    "neox": dict(pos="rotary", rotary_pct=0.25, parallel_residual=True, tie_embeddings=False),
}


def family_config(name: str, vocab_size: int) -> lm_core.ModelConfig:
    return lm_core.ModelConfig(vocab_size=vocab_size, **BASE, **FAMILIES[name])


def make_family_run(path: Path, family: str, steps: int = 4) -> Path:
    """A run folder of a tiny model of ``family``, written by lm_core's trainer (a few steps)."""
    text = load_corpus(CORPUS)[:20_000]
    tok = CharTokenizer.train(text)
    torch.manual_seed(0)
    model = lm_core.GPT(family_config(family, tok.vocab_size))
    tc = lm_core.TrainConfig(batch_size=2, max_steps=steps, eval_interval=steps, eval_iters=1, log_interval=1,
                             warmup_steps=1, checkpoint_interval=steps, sample_tokens=8, snapshots=0)
    Trainer(model, tok, text, tc, run_dir=path, corpus=CORPUS).run()
    return path


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_run(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, make_family_run(tmp_path_factory.mktemp(request.param) / "run", request.param)


@pytest.fixture
def family_env(monkeypatch, tmp_path, family_run):
    family, path = family_run
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("LM_LENS_DEFAULT_MODEL", str(path))
    monkeypatch.setenv("LM_LENS_RUNS_DIR", str(runs))
    monkeypatch.setenv("LM_LENS_CACHE", str(tmp_path / "cache"))
    yield family, path
    from app import resources

    resources.registry().stop_all()


def charts(at: AppTest) -> dict[str, dict]:
    return {el.proto.id.split("-", 2)[-1]: json.loads(el.proto.spec) for el in at.get("plotly_chart")}


def page_text(at: AppTest) -> str:
    parts = [e.value for e in at.markdown] + [e.value for e in at.caption] + [e.value for e in at.info]
    parts += [e.value for e in at.get("latex")] if hasattr(at, "get") else []
    return "\n".join(str(p) for p in parts)


def test_every_page_opens_for_the_family(family_env):
    family, _ = family_env
    at = AppTest.from_file(MAIN, default_timeout=90)
    at.run()
    for spec in PAGE_SPECS:
        at.switch_page(spec.file).run()
        assert not at.exception, (family, spec.title, [e.value for e in at.exception])
        assert not at.error, (family, spec.title, [e.value for e in at.error])
        if spec.file == "views/generate.py":
            at.button(key="gen_btn_next").click().run()
            assert not at.exception, (family, spec.title, [e.value for e in at.exception])
