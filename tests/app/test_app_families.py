"""Every page for every model family: a tiny random model of each layout (GPT-2, Llama, Qwen2
with q/k/v biases, Qwen3 with q/k norm, GPT-NeoX with parallel residual and partial rotary),
saved as a run folder by lm_core's trainer and opened as the default model, renders every page
of app/pages.py without an exception; Mechanics shows the family's own steps, Embeddings what
positions mean there, Attention which query heads share a key/value head."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import lm_core
from lm_core.corpora import load_corpus
from lm_core.tokenizers import CharTokenizer
from lm_core.train import Trainer

from app.pages import PAGES as PAGE_SPECS

ROOT = Path(__file__).resolve().parents[2]
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


def family_config(name: str, vocab_size: int, **extra) -> lm_core.ModelConfig:
    return lm_core.ModelConfig(vocab_size=vocab_size, **BASE, **{**FAMILIES[name], **extra})


def make_family_run(path: Path, family: str, steps: int = 4, **extra) -> Path:
    """A run folder of a tiny model of ``family`` (``extra``: ModelConfig fields on top, such as
    Mistral's sliding window on Llama's layout), written by lm_core's trainer (a few steps)."""
    text = load_corpus(CORPUS)[:20_000]
    tok = CharTokenizer.train(text)
    torch.manual_seed(0)
    model = lm_core.GPT(family_config(family, tok.vocab_size, **extra))
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
        assert len(at.caption) >= len(charts(at)), (family, spec.title)  # every figure says how to read it


def test_logit_lens_names_the_family_s_final_norm(family_env):
    family, _ = family_env
    at = _app("views/logit_lens.py")
    norm = "RMSNorm" if family in ("llama", "qwen2", "qwen3") else "LayerNorm"
    assert f"final {norm}" in at.main.caption[0].value


def test_export_bundle_carries_the_family_s_activations(family_env, monkeypatch):
    from app.core import bundle as B
    from lm_core.export import read_bundle

    def no_chrome(figs):
        raise RuntimeError("no Chrome found")

    monkeypatch.setattr(B, "render_pngs", no_chrome)  # HTML only: fast, and the note is tested elsewhere
    family, path = family_env
    at = _app("views/mechanics.py")
    at.sidebar.button(key="export_btn").click().run()
    assert not at.exception, [e.value for e in at.exception]
    back = read_bundle(at.session_state["export"].data)
    assert back.meta["page"] == "Mechanics" and "index.html" in back.figures
    cfg = lm_core.load_run(path).config.model
    assert back.config["model"] == cfg.to_dict()
    if cfg.pos == "rotary":
        assert "blocks.0.attn.hook_rot_q" in back.cache
    assert tuple(back.cache["blocks.0.attn.hook_k"].shape[-2:]) == (cfg.kv_heads, cfg.head_dim)


def _app(page: str) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=90)
    at.run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def _main_text(at: AppTest) -> str:
    """Everything the page itself (not the sidebar) says: markdown, captions, formulas, notes, labels."""
    m = at.main
    parts = [e.value for kind in ("markdown", "caption", "latex", "info", "warning") for e in m.get(kind)]
    parts += [e.label for e in m.get("tab")] + [e.label for e in m.get("expander")]
    return "\n".join(str(p) for p in parts)


def test_mechanics_shows_the_family_s_own_steps(family_env):
    family, _ = family_env
    at = _app("views/mechanics.py")
    text, c = _main_text(at), charts(at)
    modern = family != "gpt2"
    for key in ("mech_q", "mech_k", "mech_v", "mech_scaled", "mech_masked", "mech_pattern", "mech_z",
                "mech_attn_out", "mech_mlp_pre", "mech_mlp_post", "mech_mlp_out", "mech_logits", "mech_probs",
                "mech_ln1_scale", "mech_ln_1"):
        assert key in c, (family, key)
    rms = family in ("llama", "qwen2", "qwen3")
    assert ("RMSNorm" in text) == rms and ("LayerNorm" in text) == (not rms), family
    swiglu = family in ("llama", "qwen2", "qwen3")
    assert ("SwiGLU" in text) == swiglu and ("GELU" in text) == (not swiglu), family
    assert "mech_mlp_up" in c if swiglu else "mech_mlp_up" not in c
    # positions: a learned table only for GPT-2, the rotation with its angles for the rotary ones
    assert ("learned position embedding" in text) == (not modern), family
    assert ("mech_pos_embed" in c) == (not modern)
    if modern:
        assert {"mech_rot_angles", "mech_q_prerot", "mech_q_rot", "mech_k_rot"} <= set(c), family
        assert "RoPE" in text
    if family == "neox":
        assert "Parallel residual" in text
        assert "the first 2 of each head's 8 dims" in text
    if family == "qwen3":
        assert "mech_q_proj" in c and "q/k norm" in text
    if family in ("llama", "qwen2", "qwen3"):  # grouped-query / multi-query: the head's KV head is named
        assert "query head 0 reads key/value head 0" in text
        assert at.selectbox(key="mech_head").options[-1].endswith(")")
    # the bigram baseline beside the transformer, for the same context
    names = [t.get("name") for t in c["mech_probs"]["data"]]
    assert names == ["bigram", "transformer"], names
    assert "bigram" in text


def test_embeddings_shows_what_positions_mean(family_env):
    family, _ = family_env
    at = _app("views/embeddings.py")
    c = charts(at)
    if family == "gpt2":
        assert "emb_pos" in c and "emb_rope_distance" not in c
        return
    assert "emb_pos" not in c and {"emb_rope_distance", "emb_rope_freq"} <= set(c)
    assert "RoPE" in _main_text(at)


def test_attention_shows_which_heads_share_a_kv_head(family_env):
    family, _ = family_env
    at = _app("views/attention.py")
    opts = at.selectbox(key="attn_head").options
    overview = charts(at)["attn_overview"]
    frames = [s for s in overview["layout"].get("shapes", []) if (s.get("line") or {}).get("dash") == "dash"]
    n_kv = {"gpt2": 4, "llama": 2, "qwen2": 2, "qwen3": 1, "neox": 4}[family]
    if n_kv == BASE["n_head"]:
        assert opts == [str(h) for h in range(BASE["n_head"])] and not frames
    else:
        G = BASE["n_head"] // n_kv
        assert opts == [f"H{h} (KV {h // G})" for h in range(BASE["n_head"])]
        assert len(frames) == n_kv
        assert "Grouped-query attention" in _main_text(at)
        titles = [a["text"] for a in charts(at)["attn_grid"]["layout"]["annotations"]]
        assert titles[:2] == ["<b>head 0 · KV 0</b>", f"head 1 · KV {1 // G}"], titles


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory) -> Path:
    return make_family_run(tmp_path_factory.mktemp("other") / "llama-run", "llama")


def test_ablation_switches_heads_and_mlps_off(family_env):
    family, _ = family_env
    at = _app("views/ablation.py")
    ms = at.multiselect(key="abl_heads")
    ms.set_value(ms.options[:2])
    at.radio(key="abl_mode").set_value("mean")
    at.run()
    assert not at.exception and not at.error, (family, [e.value for e in at.exception])
    assert {"abl_dist"} <= set(charts(at)) and any(k.startswith("abl_grid") for k in charts(at))


def test_compare_a_family_with_a_llama_of_the_same_shape(family_env, llama_run):
    import shutil

    family, _ = family_env
    runs = Path(os.environ["LM_LENS_RUNS_DIR"])
    shutil.copytree(llama_run, runs / "llama-run")
    at = _app("views/compare.py")
    at.selectbox(key="cmp_b").set_value(f"run:{(runs / 'llama-run').resolve()}").run()
    assert not at.exception and not at.error, (family, [e.value for e in at.exception], [e.value for e in at.error])
    c = charts(at)
    assert {"cmp_attn_a", "cmp_attn_b", "cmp_attn_diff", "cmp_next"} <= set(c), (family, sorted(c))
    # how each side knows where a token is: a learned position map (GPT-2) beside Llama's rotary profile
    assert "cmp_b_rope_distance" in c and ("cmp_a_pos" in c) == (family == "gpt2"), (family, sorted(c))
    assert ("cmp_a_rope_distance" in c) == (family != "gpt2")
